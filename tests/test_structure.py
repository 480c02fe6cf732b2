"""Package structure: no module imports another module's private names."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "skflow_ad"

#: Private names still imported across modules, each waiting to be made public in its home.
#: Remove an entry when its import is gone; the test fails on new ones and on stale ones.
KNOWN = set()


def _private_imports():
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("skflow_ad")):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.add((path.relative_to(PACKAGE).as_posix(), node.module, alias.name))
    return found


def test_no_module_imports_another_modules_private_names():
    found = _private_imports()
    assert found - KNOWN == set(), "make these names public in their home module"
    assert KNOWN - found == set(), "these imports are gone: remove them from KNOWN"

