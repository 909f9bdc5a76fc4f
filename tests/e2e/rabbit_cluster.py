"""A RabbitMQ cluster of its own for a test, beside the machine's default node and never touching it.

Each node is a `rabbitmq-server` run as the `rabbitmq` user (whose Erlang cookie the nodes and `rabbitmqctl` share)
with its own node name, AMQP and distribution ports (free ones), configuration, enabled-plugins file, data and log
directories, all under one temporary directory; the machine's configuration (/etc/rabbitmq: the default node's
name and port) is never read. No plugin is enabled: the harness manages users with `rabbitmqctl` only
(`import_definitions`, `eval`). The nodes after the first join it (`stop_app`, `join_cluster`, `start_app`).
`rabbitmqctl` always names its node (`-n`): nothing here can reach the default node. Closing stops every node
(and kills what is left of its process group) and removes the directory, whatever happened before.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from processes import free_port

USER = "rabbitmq"
HOST = "localhost"
# The server and CLI scripts themselves: Debian's /usr/sbin wrappers send a server's output to the default node's
# /var/log/rabbitmq/startup_log, which is not ours to write.
SCRIPT_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/lib/rabbitmq/sbin")
BOOT_TIMEOUT = 90.0


class ClusterError(RuntimeError):
    """A node did not start, join or answer; the message has the command's output or the node's log."""


def _script(name: str) -> str:
    for directory in SCRIPT_DIRS:
        path = Path(directory) / name
        if path.is_file():
            return str(path)
    found = shutil.which(name)
    if found is None:
        raise ClusterError(f"{name} not found: the broker-cluster test needs RabbitMQ installed on this machine")
    return found


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The AMQP URL of this node as its admin (guest, which the nodes allow from loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log(self) -> Path:
        return self.base / "log" / "node.log"


class RabbitCluster:
    """`size` nodes joined into one cluster; see the module's text."""

    def __init__(self, size: int = 3) -> None:
        self.account = pwd.getpwnam(USER)
        self.token = secrets.token_hex(3)
        self.root = Path(tempfile.mkdtemp(prefix=f"itsm-rabbit-cluster-{self.token}-"))
        self._own(self.root)
        self.nodes = [
            Node(f"itsm-{self.token}-{n}@{HOST}", free_port(), free_port(), self.root / f"node{n}")
            for n in range(1, size + 1)
        ]
        self.server, self.cli = _script("rabbitmq-server"), _script("rabbitmqctl")

    # ------------------------------------------------------------ commands

    def _as_rabbitmq(self) -> list[str]:
        return ["runuser", "-u", USER, "--", "env", f"HOME={self.account.pw_dir}"]

    def ctl_command(self, node: Node) -> list[str]:
        """The `rabbitmqctl` of `node` (as the rabbitmq user, for its cookie): what `ITSM_RABBITMQCTL` takes."""
        return [*self._as_rabbitmq(), self.cli, "-n", node.name]

    def ctl(self, node: Node, *args: str, timeout: float = 60.0) -> str:
        command = [*self.ctl_command(node), *args]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{shlex.join(command)} took longer than {timeout:.0f}s") from exc
        if result.returncode != 0:
            raise ClusterError(
                f"{shlex.join(command)} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
            )
        return result.stdout

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        for node in self.nodes:
            self._prepare(node)
            self._launch(node)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._await_boot, self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        running = self.running_nodes()
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise ClusterError(f"the cluster runs {running}, not {[n.name for n in self.nodes]}")

    def close(self) -> None:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(self._stop_node, self.nodes))
        shutil.rmtree(self.root, ignore_errors=True)

    def _own(self, path: Path) -> None:
        os.chown(path, self.account.pw_uid, self.account.pw_gid)

    def _prepare(self, node: Node) -> None:
        for directory in (node.base, node.base / "mnesia", node.base / "log"):
            directory.mkdir(exist_ok=True)
            self._own(directory)
        files = {
            # Only this node's listener; a small disk-free limit (the temporary folder may be on a small disk).
            "rabbitmq.conf": f"listeners.tcp.1 = 127.0.0.1:{node.port}\ndisk_free_limit.absolute = 50MB\n",
            "enabled_plugins": "[].\n",
            # Read instead of /etc/rabbitmq/rabbitmq-env.conf (the default node's name).
            "rabbitmq-env.conf": "",
        }
        for name, text in files.items():
            (node.base / name).write_text(text)
            self._own(node.base / name)

    def _environment(self, node: Node) -> list[str]:
        return [
            f"RABBITMQ_NODENAME={node.name}",
            "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
            f"RABBITMQ_NODE_PORT={node.port}",
            f"RABBITMQ_DIST_PORT={node.dist_port}",
            f"RABBITMQ_CONF_ENV_FILE={node.base / 'rabbitmq-env.conf'}",
            f"RABBITMQ_CONFIG_FILE={node.base / 'rabbitmq.conf'}",
            f"RABBITMQ_ADVANCED_CONFIG_FILE={node.base / 'advanced.config'}",
            f"RABBITMQ_ENABLED_PLUGINS_FILE={node.base / 'enabled_plugins'}",
            f"RABBITMQ_MNESIA_BASE={node.base / 'mnesia'}",
            f"RABBITMQ_LOG_BASE={node.base / 'log'}",
            f"RABBITMQ_LOGS={node.log}",
            "ERL_EPMD_ADDRESS=127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
        ]

    def _launch(self, node: Node) -> None:
        output = (node.base / "log" / "server.out").open("wb")
        with output:
            node.process = subprocess.Popen(
                [*self._as_rabbitmq(), *self._environment(node), self.server],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=node.base,
                start_new_session=True,  # its own process group: closing kills what is left of it
            )

    def _await_boot(self, node: Node) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            assert node.process is not None
            if node.process.poll() is not None:
                raise ClusterError(f"{node.name} exited ({node.process.returncode}):\n{self._tail(node)}")
            try:
                self.ctl(node, "await_startup", "--timeout", "10", timeout=30)
                return
            except ClusterError as exc:
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} did not start: {exc}\n{self._tail(node)}") from exc
                time.sleep(0.5)

    def _stop_node(self, node: Node) -> None:
        process = node.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ClusterError):
                self.ctl(node, "stop", timeout=60)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None or _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    def _tail(self, node: Node, lines: int = 40) -> str:
        text = []
        for path in (node.base / "log" / "server.out", node.log):
            with contextlib.suppress(OSError):
                text += [f"--- {path}", *path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(text)

    # ------------------------------------------------------------ what the test asks

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def running_nodes(self, via: Node | None = None) -> list[str]:
        """The nodes `via` (the first running one by default) sees running, by name."""
        output = self.ctl(via or self.nodes[0], "eval", "rabbit_nodes:all_running().")
        return re.findall(r"'([^']+)'", output)

    def queues(self, via: Node, *items: str) -> list[list[str]]:
        """`list_queues <items>` on the default vhost, one row per queue (tab-separated fields)."""
        output = self.ctl(via, "list_queues", "--quiet", "--no-table-headers", *items)
        return [line.split("\t") for line in output.splitlines() if line.strip()]

    def leaders(self, via: Node, names: Sequence[str]) -> dict[str, str]:
        """The node leading each of the quorum queues `names`."""
        rows = {row[0]: row[1] for row in self.queues(via, "name", "leader")}
        return {name: rows.get(name, "") for name in names}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


@contextlib.contextmanager
def rabbit_cluster(size: int = 3, meanwhile: Callable[[RabbitCluster], None] | None = None) -> Iterator[RabbitCluster]:
    """A started cluster of `size` nodes, stopped and removed when the block ends (or its start fails).
    `meanwhile(cluster)` runs while the nodes start (their names and ports are known; they do not answer yet)."""
    cluster = RabbitCluster(size)
    try:
        with ThreadPoolExecutor(1) as pool:
            started = pool.submit(cluster.start)
            try:
                if meanwhile is not None:
                    meanwhile(cluster)
            finally:
                started.result()
        yield cluster
    finally:
        cluster.close()
