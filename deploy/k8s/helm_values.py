"""The parts of the two Helm charts' values.yaml that come from the table of services (deploy/services.toml).

Each values.yaml has one region between `# BEGIN generated: services` and `# END generated: services` (the data
chart's also `broker-roles`, from itsm_shared.trust); this module writes them and leaves every other line as
written by hand (the same regions mechanism as deploy/configs.py, whose `replace_regions` it uses).

    python deploy/k8s/helm_values.py           rewrite the regions (after editing deploy/services.toml)
    python deploy/k8s/helm_values.py --check   exit 1 and show the difference when a file is not up to date

tests/deploy/test_k8s_table.py runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

K8S_DIR = Path(__file__).resolve().parent
REPO_ROOT = K8S_DIR.parents[1]
if str(K8S_DIR.parent) not in sys.path:  # deploy/, where the table and the regions mechanism live
    sys.path.insert(0, str(K8S_DIR.parent))
if str(REPO_ROOT / "libs" / "shared" / "src") not in sys.path:  # itsm_shared.trust (standard library only)
    sys.path.append(str(REPO_ROOT / "libs" / "shared" / "src"))

import configs  # noqa: E402
import service_table as services  # noqa: E402

APP_VALUES = K8S_DIR / "itsm" / "values.yaml"
DATA_VALUES = K8S_DIR / "itsm-data" / "values.yaml"


def _flow(values: Sequence[str]) -> str:
    """A YAML flow sequence of strings (JSON strings are YAML strings)."""
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def app_region(table: Sequence[services.Service]) -> str:
    """Each service's port and gateway prefixes (and the audit service's replay queues), and where the issuer's JWKS
    is."""
    lines = ["services:\n"]
    for s in table:
        lines.append(f"  {s.name}:\n    port: {s.port}\n    prefixes: {_flow(s.prefixes)}\n")
        if s.name == services.AUDITOR:  # where its replay may publish: the other services' consumer queues
            queues = json.dumps(",".join(services.replay_queues(table)))
            lines.append(f"    env: {{ITSM_AUDIT_REPLAY_QUEUES: {queues}}}\n")
    lines.append(f"jwks:\n  service: {services.ISSUER}\n  path: {services.JWKS_PATH}\n")
    return "".join(lines)


def data_region(table: Sequence[services.Service]) -> str:
    """The names: one PostgreSQL login role and one RabbitMQ user per service."""
    return f"services: {_flow([s.name for s in table])}\n"


def broker_roles_region(table: Sequence[services.Service]) -> str:
    """What each service's broker user publishes and binds (the first words of routing keys; "#": any) and whether
    it replays through the default exchange: itsm_shared.trust, the one table of who may publish what."""
    from itsm_shared.trust import REPLAYER, role

    lines = ["brokerRoles:\n"]
    for s in table:
        of = role(s.name)
        replays = ", replays: true" if s.name == REPLAYER else ""
        lines.append(f"  {s.name}: {{publishes: {_flow(of.publishes)}, binds: {_flow(of.binds)}{replays}}}\n")
    return "".join(lines)


def render(path: Path, table: Sequence[services.Service] | None = None) -> str:
    table = services.table() if table is None else table
    if path == APP_VALUES:
        regions = {"services": app_region(table)}
    else:
        regions = {"services": data_region(table), "broker-roles": broker_roles_region(table)}
    return configs.replace_regions(path.read_text(), regions, path=path)


def outdated() -> dict[Path, str]:
    """Each values.yaml that differs from what the table makes of it, with the text it should have."""
    wanted = {path: render(path) for path in (APP_VALUES, DATA_VALUES)}
    return {path: text for path, text in wanted.items() if path.read_text() != text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the generated regions of the Helm charts' values.yaml.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    stale = outdated()
    for path, text in stale.items():
        relative = path.relative_to(REPO_ROOT)
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    path.read_text().splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{relative} (committed)",
                    f"{relative} (from deploy/services.toml)",
                )
            )
        else:
            path.write_text(text)
            print(f"rewrote {relative}")
    if args.check and stale:
        print("out of date: run `python deploy/k8s/helm_values.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
