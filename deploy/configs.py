"""The parts of deploy/traefik/dynamic.yml and docker-compose.yml that come from the table of services.

Both files are committed, because docker-compose uses them as they are. Each has regions between a
`BEGIN generated: <region>` and an `END generated: <region>` line; this module writes those regions from
deploy/services.toml and leaves every other line as written by hand.

    python deploy/configs.py           rewrite the regions (`make config`)
    python deploy/configs.py --check   exit 1 and show the difference when a file is not up to date

tests/deploy runs the check, and the runner renders the Traefik file from the table into its run dir, so
`make run` follows the table even before the committed copy is rewritten.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import service_table as services

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "libs" / "shared" / "src") not in sys.path:  # itsm_shared.broker_users (standard library only)
    sys.path.append(str(REPO_ROOT / "libs" / "shared" / "src"))

from itsm_shared.broker_users import Topology, definitions  # noqa: E402

TRAEFIK_DYNAMIC = REPO_ROOT / "deploy" / "traefik" / "dynamic.yml"
COMPOSE = REPO_ROOT / "docker-compose.yml"

# The issuer's container creates the first admin with it.
BOOTSTRAP = "ITSM_BOOTSTRAP_ADMIN_PASSWORD"
# The issuer's key-encryption key, a compose secret (from ITSM_AUTH_KEK on the host) mounted in its container only.
KEK_SECRET = "auth_kek"  # noqa: S105 (the name of a compose secret, not its value)
# The webhook service's key of the signing secrets, a compose secret (from ITSM_WEBHOOK_SECRET_KEY on the host)
# mounted in its container only.
WEBHOOK = "webhook"
WEBHOOK_KEY_SECRET = "webhook_secret_key"  # noqa: S105 (the name of a compose secret, not its value)
# The audit service's anchor key (it signs each batch of its hash chain), a compose secret (from ITSM_AUDIT_ANCHOR_KEY
# on the host) mounted in its container only.
ANCHOR_SECRET = "audit_anchor_key"  # noqa: S105 (the name of a compose secret, not its value)


def db_secret(name: str) -> str:
    """The compose secret of `<name>_app`'s password, mounted in `migrate-<name>` and `<name>` only."""
    return f"{name}_db_password"


def db_password_env(name: str) -> str:
    """The host variable it is made from (itsm_shared.settings.db_app_password_variable)."""
    return f"ITSM_DB_APP_PASSWORD_{name.upper()}"


def amqp_secret(name: str) -> str:
    """The compose secret of the password of `<name>`'s broker user, mounted in `<name>` only (and in the broker's
    definitions)."""
    return f"{name}_amqp_password"


def amqp_password_env(name: str) -> str:
    """The host variable it is made from (deploy/broker_accounts.py reads the same under `make run`)."""
    return f"ITSM_AMQP_PASSWORD_{name.upper()}"


def broker_definitions(table: Sequence[services.Service]) -> str:
    """The compose config `rabbitmq_definitions`: RabbitMQ's users, one per service with its permissions
    (itsm_shared.broker_users, for compose's names), and the operator's administrator, which no service uses. The
    passwords come from the host's variables when compose reads the file; `$$` is compose's `$`."""
    placeholders = {s.name: f"@{amqp_password_env(s.name)}@" for s in table}
    document = definitions(placeholders, Topology())
    document["users"].insert(0, {"name": "@ADMIN@", "password": "@ADMIN_PASSWORD@", "tags": ["administrator"]})
    document["permissions"].insert(0, {"user": "@ADMIN@", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"})
    document = {"vhosts": [{"name": "/"}], **document}
    text = json.dumps(document, indent=2).replace("$", "$$")
    for s in table:
        variable = amqp_password_env(s.name)
        text = text.replace(f"@{variable}@", f"${{{variable}:?the password of {s.name}'s broker user}}")
    text = text.replace("@ADMIN@", "${ITSM_RABBITMQ_USER:-itsm}")
    text = text.replace("@ADMIN_PASSWORD@", "${ITSM_RABBITMQ_PASSWORD:-rabbitmq-dev-only}")
    body = "".join(f"      {line}\n" for line in text.splitlines())
    return f"  rabbitmq_definitions:\n    content: |\n{body}"


_BEGIN = re.compile(r"BEGIN generated: ([\w-]+)")


class ConfigError(ValueError):
    """A file's generated regions are missing or malformed."""


def replace_regions(text: str, regions: Mapping[str, str], *, path: Path) -> str:
    """`text` with the lines between each region's BEGIN and END marker replaced by `regions[name]`."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    seen: set[str] = set()
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        index += 1
        found = _BEGIN.search(line)
        if found is None:
            continue
        name = found.group(1)
        if name not in regions:
            raise ConfigError(f"{path}: unknown generated region {name!r}")
        if name in seen:
            raise ConfigError(f"{path}: region {name!r} appears twice")
        end = next((i for i in range(index, len(lines)) if f"END generated: {name}" in lines[i]), None)
        if end is None:
            raise ConfigError(f"{path}: region {name!r} has no END line")
        out.append(regions[name])
        index = end
        seen.add(name)
    missing = sorted(set(regions) - seen)
    if missing:
        raise ConfigError(f"{path}: no BEGIN line for regions {missing}")
    return "".join(out)


# ------------------------------------------------------------------------------------------ Traefik


def traefik_regions(table: Sequence[services.Service]) -> dict[str, str]:
    """The service list and prefixes the Go template of dynamic.yml loops over."""
    prefixes = "\n".join(f'      "{s.name}" (list {_quoted(s.prefixes)})' for s in table)
    names = _quoted(s.name for s in table)
    return {"services": f"{{{{- $services := list {names} }}}}\n{{{{- $prefixes := dict\n{prefixes} }}}}\n"}


def _quoted(values: Iterable[str]) -> str:
    return " ".join(f'"{value}"' for value in values)


def render_dynamic(table: Sequence[services.Service] | None = None, template: Path = TRAEFIK_DYNAMIC) -> str:
    """dynamic.yml as it must be for `table` (default: the table in deploy/services.toml)."""
    table = services.table() if table is None else table
    return replace_regions(template.read_text(), traefik_regions(table), path=template)


# ------------------------------------------------------------------------------------------ compose

_MIGRATE = """\
  migrate-%(name)s:
    <<: *migrate
    build:
      <<: *service-build
      args:
        SERVICE: %(name)s
    image: itsm-%(name)s
    command: ["python", "-m", "itsm_shared.migrate", "%(name)s"]
    environment:
      <<: *migrate-env
      %(password_env)s_FILE: /run/secrets/%(db_secret)s
    secrets: [%(db_secret)s]

"""

_SERVICE = """\
  %(name)s:
    <<: *service
    build:
      <<: *service-build
      args:
        SERVICE: %(name)s
    image: itsm-%(name)s
    environment:
      <<: *service-env
      PORT: "%(port)d"
      ITSM_DATABASE_URL: postgresql://%(name)s_app@postgres:5432/${ITSM_DATABASE_NAME:-itsm}
      ITSM_DB_PASSWORD_FILE: /run/secrets/%(db_secret)s
      ITSM_AMQP_URL: amqp://%(name)s@rabbitmq:5672/
      ITSM_AMQP_PASSWORD_FILE: /run/secrets/%(amqp_secret)s
%(extra_env)s    secrets: [%(secrets)s]
    expose: ["%(port)d"]
    healthcheck:
      test: ["CMD", "python", "-c", "%(readyz)s"]
      interval: 10s
      timeout: 3s
      retries: 3
      start_period: 30s
      start_interval: 2s
    depends_on:
      migrate-%(name)s:
        condition: service_completed_successfully
      rabbitmq:
        condition: service_healthy
%(issuer)s
"""


def compose_regions(table: Sequence[services.Service]) -> dict[str, str]:
    issuer = next(s for s in table if s.name == services.ISSUER)
    blocks: list[str] = []
    for s in table:
        is_issuer = s.name == services.ISSUER
        is_auditor = s.name == services.AUDITOR
        is_webhook = s.name == WEBHOOK
        values = {
            "name": s.name,
            "port": s.port,
            "readyz": f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{s.port}/readyz', timeout=2)",
            "extra_env": (
                f"      {BOOTSTRAP}: ${{{BOOTSTRAP}:-}}\n      ITSM_AUTH_KEK_FILE: /run/secrets/{KEK_SECRET}\n"
                if is_issuer
                else ""
            )
            + (
                f"      ITSM_AUDIT_ANCHOR_KEY_FILE: /run/secrets/{ANCHOR_SECRET}\n"
                f"      ITSM_AUDIT_REPLAY_QUEUES: {','.join(services.replay_queues(table))}\n"
                if is_auditor
                else ""
            )
            + (f"      ITSM_WEBHOOK_SECRET_KEY_FILE: /run/secrets/{WEBHOOK_KEY_SECRET}\n" if is_webhook else ""),
            "db_secret": db_secret(s.name),
            "amqp_secret": amqp_secret(s.name),
            "password_env": db_password_env(s.name),
            "secrets": (f"{KEK_SECRET}, " if is_issuer else "")
            + (f"{ANCHOR_SECRET}, " if is_auditor else "")
            + (f"{WEBHOOK_KEY_SECRET}, " if is_webhook else "")
            + f"{db_secret(s.name)}, {amqp_secret(s.name)}",
            # The others fetch the issuer's JWKS when they start.
            "issuer": "" if is_issuer else f"      {issuer.name}:\n        condition: service_healthy\n",
        }
        blocks.append(_MIGRATE % values + _SERVICE % values)
    return {
        "jwks": f"  ITSM_JWKS_URL: http://{issuer.name}:{issuer.port}{services.JWKS_PATH}\n",
        "services": "".join(blocks),
        "gateway-upstreams": "".join(f"      {s.upstream_env}: http://{s.name}:{s.port}\n" for s in table),
        "gateway-depends-on": "".join(f"      {s.name}:\n        condition: service_started\n" for s in table),
        "db-secrets": "".join(f"  {db_secret(s.name)}:\n    environment: {db_password_env(s.name)}\n" for s in table),
        "amqp-secrets": "".join(
            f"  {amqp_secret(s.name)}:\n    environment: {amqp_password_env(s.name)}\n" for s in table
        ),
        "broker-definitions": broker_definitions(table),
    }


def render_compose(table: Sequence[services.Service] | None = None, template: Path = COMPOSE) -> str:
    table = services.table() if table is None else table
    return replace_regions(template.read_text(), compose_regions(table), path=template)


# ------------------------------------------------------------------------------------------ command


def outdated() -> dict[Path, str]:
    """Each committed file that differs from what the table makes of it, with the text it should have."""
    wanted = {TRAEFIK_DYNAMIC: render_dynamic(), COMPOSE: render_compose()}
    return {path: text for path, text in wanted.items() if path.read_text() != text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the generated regions of dynamic.yml and compose.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    stale = outdated()
    for path, text in stale.items():
        relative = path.relative_to(REPO_ROOT)
        if args.check:
            diff = difflib.unified_diff(
                path.read_text().splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"{relative} (committed)",
                f"{relative} (from deploy/services.toml)",
            )
            sys.stdout.writelines(diff)
        else:
            path.write_text(text)
            print(f"rewrote {relative}")
    if args.check and stale:
        print("out of date: run `make config`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
