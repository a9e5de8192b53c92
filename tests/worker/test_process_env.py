"""The training child's environment: Triton's compiled kernels live beside the worker's cache (kept between jobs
and worker restarts), unless the operator put them elsewhere."""

from __future__ import annotations

import os

from app.core.settings import Settings
from worker.child.process import prepare_process


def test_compiled_kernels_are_kept_under_the_worker_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    prepare_process(Settings(cache_dir=tmp_path / "cache", artifacts_dir=tmp_path / "store"))
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "compiled" / "triton")


def test_an_operator_s_own_triton_cache_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", "/srv/triton")
    prepare_process(Settings(cache_dir=tmp_path / "cache", artifacts_dir=tmp_path / "store"))
    assert os.environ["TRITON_CACHE_DIR"] == "/srv/triton"
