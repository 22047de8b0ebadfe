"""The packages' layering, read from every import statement (lazy ones inside functions included):

- `core/` is the bottom: observability, metrics, Redis clients, the async database pool, HTTP helpers.
  It imports Django and libraries, never an app and never `config`.
- `config/` is wiring only (settings, URLs, ASGI/WSGI, gunicorn, Celery): apps never import it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "billing", "chat", "checks", "tenants", "webhooks")


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def top(module: str) -> str:
    return module.split(".", 1)[0]


def test_core_imports_no_app_and_not_config():
    offending = {path: sorted(m for m in modules if top(m) in (*APPS, "config"))
                 for path, modules in imported_modules("core").items()}
    assert {path: mods for path, mods in offending.items() if mods} == {}
    assert len(offending) >= 10  # the walk saw core's modules


def test_apps_do_not_import_config_except_its_settings():
    offending = {}
    for app in APPS:
        for path, modules in imported_modules(app).items():
            bad = sorted(m for m in modules if top(m) == "config" and not m.startswith("config.settings"))
            if bad:
                offending[path] = bad
    assert offending == {}
