"""How many GPUs a training worker advertises (app/core/fleet.py owned_gpus): the setting first, then the worker's
CUDA_VISIBLE_DEVICES, then nvidia-smi's list, and 0 on a host with none of them. No torch involved."""

from __future__ import annotations

import os
import stat

import pytest

from app.core.fleet import owned_gpus
from app.core.settings import Settings


@pytest.mark.parametrize(("visible", "expected"), [("0", 1), ("0,1", 2), ("2, 3 ,5", 3), ("", 0), ("-1", 0)])
def test_cuda_visible_devices_counts(visible, expected):
    assert owned_gpus(Settings(), {"CUDA_VISIBLE_DEVICES": visible}) == expected


def test_the_setting_wins():
    assert owned_gpus(Settings(worker_gpus=4), {"CUDA_VISIBLE_DEVICES": "0"}) == 4
    assert owned_gpus(Settings(worker_gpus=0), {}) == 0


def test_nvidia_smi_lists_them_where_nothing_else_says(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    gpus = "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b)'\n"
    fake.write_text("#!/bin/sh\n" + gpus)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert owned_gpus(Settings(), {}) == 2
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert owned_gpus(Settings(), {}) == 0  # no nvidia-smi: a CPU worker
