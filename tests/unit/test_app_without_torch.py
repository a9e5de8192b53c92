"""The API process never imports the training stack: app.main imports, and its OpenAPI schema builds, in an
interpreter where torch, transformers, peft, bitsandbytes and bert_score cannot be imported at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

BLOCKED = ("torch", "transformers", "peft", "bitsandbytes", "bert_score")

SCRIPT = r"""
import importlib.abc, json, sys

BLOCKED = tuple(sys.argv[1].split(","))


class BlockTrainingStack(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {name}")
        return None


sys.meta_path.insert(0, BlockTrainingStack())

# The blocker works: otherwise this test could pass without proving anything.
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} was importable despite the blocker")

import app.main

schema = app.main.app.openapi()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({"loaded": loaded, "paths": sorted(schema["paths"]), "title": schema["info"]["title"]}))
"""


def test_app_imports_and_builds_openapi_without_the_training_stack():
    env = dict(os.environ)  # carries the FTAAS_* settings conftest set
    assert env["FTAAS_DATABASE_URL"].startswith("postgresql")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["loaded"] == []
    assert report["title"] == "ftaas"
    for path in (
        "/v1/files",
        "/v1/files/{file_id}/leaderboard",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}/adapter",
        "/v1/sweeps",
        "/v1/sweeps/{sweep_id}/leaderboard",
        "/v1/sweeps/{sweep_id}/page",
        "/v1/sweeps/{sweep_id}/charts/metric.png",
        "/v1/comparisons",
        "/v1/models",
        "/healthz",
        "/readyz",
    ):
        assert path in report["paths"]
