"""Deploy tests import the harness, the runner and the table as the e2e tests do: deploy/ on sys.path
(`import stack`, `import gateway`, `import service_table as services`, ...).

The fixtures shared by the modules of one concern: the rendered Kubernetes charts (test_k8s_*.py, helpers in
k8s_charts.py) and the two gateways in front of stub backends (test_gateway*.py, helpers in gateway_support.py)."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy"))

from gateway_stubs import StubServer, stub_backend  # noqa: E402
from gateway_support import LIVE, Gateway, start_test_gateway  # noqa: E402
from k8s_charts import APP, DATA, Doc, render  # noqa: E402
from processes import free_port  # noqa: E402
from stack import Stack, StackSettings  # noqa: E402

# ---------------------------------------------------------------- the Kubernetes charts


@pytest.fixture(scope="module")
def app_chart() -> list[Doc]:
    """The objects of the itsm chart with its default values."""
    return render(APP)


@pytest.fixture(scope="module")
def data_chart() -> list[Doc]:
    """The objects of the itsm-data chart with its default values."""
    return render(DATA)


@pytest.fixture(scope="module")
def app_values() -> dict[str, Any]:
    """The itsm chart's values.yaml."""
    loaded: dict[str, Any] = yaml.safe_load((APP / "values.yaml").read_text())
    return loaded


# ---------------------------------------------------------------- the gateway in front of stub backends
# One of each for the whole session, as when the gateway tests were one module: every limit test keeps to a
# router and client address of its own on them.


@pytest.fixture(scope="session")
def stubs() -> Iterator[dict[str, StubServer]]:
    with (
        stub_backend("auth") as auth,
        stub_backend("incident") as incident,
        stub_backend("problem") as problem,
        stub_backend("change") as change,
        stub_backend("webhook") as webhook,
    ):
        yield {"auth": auth, "incident": incident, "problem": problem, "change": change, "webhook": webhook}


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, StubServer]) -> Iterator[Gateway]:
    """Production defaults but a generous API limit; audit has no upstream ("not built")."""
    upstreams: dict[str, str | None] = {name: stubs[name].url for name in LIVE}
    upstreams["audit"] = None
    gw = start_test_gateway(
        tmp_path_factory.mktemp("gateway"), stubs, upstreams, api_rate_limit=1000, login_rate_limit=10
    )
    yield gw
    gw.process.stop(grace=5)


@pytest.fixture(scope="session")
def strict(tmp_path_factory: pytest.TempPathFactory, stubs: dict[str, StubServer]) -> Iterator[Gateway]:
    """ITSM_API_RATE_LIMIT=5, ITSM_LOGIN_RATE_LIMIT=10, an in-flight cap of 2; problem's upstream is a closed port."""
    closed = free_port()  # nothing listens there: a service that was started once and died
    upstreams: dict[str, str | None] = {
        "auth": stubs["auth"].url,
        "incident": stubs["incident"].url,
        "change": stubs["change"].url,
        "problem": f"http://127.0.0.1:{closed}",
        "audit": None,
    }
    gw = start_test_gateway(
        tmp_path_factory.mktemp("strict"),
        stubs,
        upstreams,
        api_rate_limit=5,
        login_rate_limit=10,
        extra_env={"ITSM_API_MAX_INFLIGHT": "2"},
    )
    yield gw
    gw.process.stop(grace=5)


# ---------------------------------------------------------------- the keys the runner generates per run dir


@pytest.fixture
def generated_key_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str, str], tuple[Stack, Path]]:
    """`(service, variable)`: with neither `variable` nor `variable`_FILE in the operator's shell, the runner of a
    stack in tmp_path and the key file it gives `service` (in the run dir, mode 0600)."""

    def generated(service: str, variable: str) -> tuple[Stack, Path]:
        pytest.importorskip("itsm_shared.provision")
        monkeypatch.delenv(variable, raising=False)
        monkeypatch.delenv(f"{variable}_FILE", raising=False)
        runner = Stack(StackSettings.isolated(tmp_path, services=()))
        path = Path(runner.service_env(service)[f"{variable}_FILE"])
        assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o600
        return runner, path

    return generated
