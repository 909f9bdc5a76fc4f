"""Deploy tests import the harness, the runner and the table as the e2e tests do: deploy/ on sys.path
(`import stack`, `import gateway`, `import service_table as services`, ...).

The fixtures shared by the modules of one concern: the rendered Kubernetes charts (test_k8s_*.py, helpers in
k8s_charts.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy"))

from k8s_charts import APP, DATA, Doc, render  # noqa: E402

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
