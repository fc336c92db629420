"""Dependencies point one way (STYLE.md): every import of every package against a table."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGES = {"cli", "contactsync", "api_gateway", "worker", "tasks", "bench", "tests"}
# Which of our packages each package may import (its own always). `worker` includes `tasks` by
# name only (Celery's `include`, a module started with -m): tasks import the Celery app.
ALLOWED = {
    "cli": PACKAGES - {"tests", "bench"},
    "api_gateway": {"contactsync"},
    "tasks": {"contactsync", "worker"},
    "worker": {"contactsync"},
    "contactsync": set(),
    "bench": PACKAGES - {"tests"},
    "tests": PACKAGES,
}


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def wrong_imports(root: Path, allowed: dict[str, set[str]]) -> list[str]:
    """Return "file: module" for every import of one of our packages the table forbids."""
    wrong = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            for module in _imported(ast.parse(path.read_text(), str(path))):
                top = module.split(".")[0]
                if top in allowed and top != package and top not in may:
                    wrong.append(f"{path.relative_to(root)}: {module}")
    return wrong


def test_every_import_points_the_allowed_way() -> None:
    assert wrong_imports(ROOT, ALLOWED) == []


def test_a_wrong_import_is_found(tmp_path: Path) -> None:
    for package, source in {
        "contactsync": "from contactsync import db\nimport worker.app\n",
        "worker": "from contactsync.db import Database\n",
        "tasks": "def f() -> None:\n    from worker.app import app\n",
    }.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "m.py").write_text(source)
    table = {"contactsync": set(), "worker": {"contactsync"}, "tasks": {"contactsync"}}
    assert wrong_imports(tmp_path, table) == ["contactsync/m.py: worker.app",
                                              "tasks/m.py: worker.app"]
