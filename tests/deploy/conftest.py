"""Deploy tests import the harness, the runner and the table as the e2e tests do: deploy/ on sys.path
(`import stack`, `import gateway`, `import service_table as services`, ...)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy"))
