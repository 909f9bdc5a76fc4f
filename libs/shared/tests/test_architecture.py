"""Rules of ARCHITECTURE.md that a reading of the source can check."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SERVICE_SOURCES = sorted(REPO.glob("services/*/src/**/*.py"))


def _commits(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "commit"
    ]


def test_services_are_found() -> None:
    assert len({p.parts[len(REPO.parts) + 1] for p in SERVICE_SOURCES}) >= 5


def test_no_service_module_commits() -> None:
    """Rule 3: one seam owns the transaction (itsm_shared.db.transaction, behind SessionDep, handle_once and the
    schedulers); use cases, routers and consumers never call commit()."""
    found = {str(p.relative_to(REPO)): lines for p in SERVICE_SOURCES if (lines := _commits(p))}
    assert found == {}, f"commit() outside the seam: {found}"
