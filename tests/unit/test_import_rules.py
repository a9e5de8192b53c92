"""The layout's import rules, checked on the code itself:

- the training child's import graph (every module `python -m worker.child` can reach, lazy imports inside
  functions included) holds no web module: no fastapi, starlette, uvicorn, Celery, and nothing of app/ outside
  app.core and app.datasets;
- worker/ imports only app.core and the dataset readers (app.datasets) from app/;
- app/ never imports torch or the rest of the training stack, not even lazily (nor worker/, but for the CLI).

Static (every import statement, read with ast) and live (the child's modules imported in an interpreter where
the web modules cannot be imported at all).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

WEB = ("fastapi", "starlette", "uvicorn", "celery", "kombu", "sse_starlette", "multipart")
TRAINING_STACK = ("torch", "transformers", "peft", "bitsandbytes", "bert_score", "liger_kernel", "triton")
APP_FOR_WORKER = ("app.core", "app.datasets")  # what worker/ may import of app/
CHILD_ENTRY = "worker.child.__main__"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in the file, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from worker.tasks import comparisons` imports a submodule: follow it too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def modules_under(*packages: str) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[module_name(path)] = path
    return out


def is_in(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


def reachable(entry: str, project: dict[str, Path]) -> dict[str, str]:
    """The project's modules reachable from `entry` through any import statement, each with one import chain
    that reaches it (for the failure message); third-party modules end a chain."""
    chains, todo = {entry: entry}, [entry]
    while todo:
        current = todo.pop()
        for _line, name in imports_of(project[current]):
            parts = name.split(".")
            # the module and each package above it run when it is imported
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate not in chains:
                    chains[candidate] = f"{chains[current]} -> {candidate}"
                    if candidate in project:
                        todo.append(candidate)
    return chains


def child_violations(project: dict[str, Path]) -> list[str]:
    chains = reachable(CHILD_ENTRY, project)
    return sorted(
        chain
        for name, chain in chains.items()
        if is_in(name, WEB) or (is_in(name, ("app",)) and name != "app" and not is_in(name, APP_FOR_WORKER))
    )


def test_the_training_child_s_import_graph_holds_no_web_module():
    project = modules_under("app", "worker")
    chains = reachable(CHILD_ENTRY, project)
    # the graph is the real one: it reaches the recipe, the training loop and the comparison child
    assert {"worker.child.recipe", "worker.training.loop", "worker.child.comparison", "app.core.tables"} <= set(chains)
    assert child_violations(project) == []


def test_the_child_rule_catches_a_web_import(tmp_path):
    """The rule above is not vacuous: a child module that reaches the API through app.core is reported."""
    project = modules_under("app", "worker")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from app.api.deps import session_scope\n")
    core = tmp_path / "core.py"
    core.write_text(project["app.core.storage"].read_text() + "\nimport starlette\n")
    project["worker.child.recipe"], project["app.core.storage"] = bad, core
    found = child_violations(project)
    assert any(v.endswith("-> app.api") for v in found) and any(v.endswith("-> starlette") for v in found)


def test_worker_imports_only_the_core_and_the_dataset_readers_from_app():
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules_under("worker").values()
        for line, name in imports_of(path)
        if is_in(name, ("app",)) and name != "app" and not is_in(name, APP_FOR_WORKER)
    ]
    assert bad == []


def test_app_never_imports_the_training_stack():
    """Nor the worker's code, but for the CLI's worker commands (`ftaas worker`, `ftaas reconcile`): app/cli.py
    is the one entry point of both processes."""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for module, path in modules_under("app").items()
        for line, name in imports_of(path)
        if is_in(name, TRAINING_STACK) or (is_in(name, ("worker",)) and module != "app.cli")
    ]
    assert bad == []


LIVE = r"""
import importlib, importlib.abc, sys

BLOCKED = tuple(sys.argv[1].split(","))
ALLOWED_APP = ("app.core", "app.datasets")


def blocked(name):
    if name.split(".")[0] in BLOCKED:
        return True
    return name.startswith("app.") and not any(name == a or name.startswith(a + ".") for a in ALLOWED_APP)


class BlockWeb(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ImportError(f"blocked in this test: {name}")
        return None


sys.meta_path.insert(0, BlockWeb())
for name in sys.argv[2].split(","):
    importlib.import_module(name)
print(sorted(m for m in sys.modules if blocked(m)))
"""


def test_every_module_of_the_child_imports_with_the_web_stack_unavailable():
    """Live: each module the child can reach imports in an interpreter where fastapi, starlette, Celery and
    app/'s web packages cannot be imported (torch and the training stack can)."""
    project = modules_under("app", "worker")
    child_modules = sorted(m for m in reachable(CHILD_ENTRY, project) if m in project)
    result = subprocess.run(
        [sys.executable, "-c", LIVE, ",".join(WEB), ",".join(child_modules)],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
