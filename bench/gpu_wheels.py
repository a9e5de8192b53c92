"""The wheels the GPU machine needs, derived from the project's own dependencies rather than listed by hand.

Walks the requirements of ftaas with its `worker` and `gpu` extras, transitively (through the installed
packages' metadata in this virtualenv), stops at packages the GPU image already holds
(bench/gpu_image_packages.txt), and prints `name==version` for every other one, at the version constraints.txt
locks. bench/fetch_gpu_wheels.sh downloads them.

    .venv/bin/python bench/gpu_wheels.py            # one requirement a line
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("worker", "gpu")
# From the test extra, what the GPU benchmarks run beside the service: bench/bench_dpo.py's TRL DPOTrainer.
COMPARED = ("trl",)
# The GPU machine's Python, for environment markers (python_version < "3.12" and the like).
GPU_MARKERS = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3"}


def read_names(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(line) for line in lines if line}


def read_lock() -> dict[str, str]:
    lock = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            lock[canonicalize_name(name)] = version.strip()
    return lock


def applies(req: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    return req.marker is None or any(req.marker.evaluate({**GPU_MARKERS, "extra": e}) for e in extras)


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for e in EXTRAS for r in project["optional-dependencies"][e]]
    reqs += [r for r in project["optional-dependencies"]["test"] if Requirement(r).name in COMPARED]
    return [r for r in map(Requirement, reqs) if applies(r)]


def needed() -> dict[str, str]:
    have, lock = read_names(ROOT / "bench" / "gpu_image_packages.txt"), read_lock()
    out: dict[str, str] = {}
    todo = project_requirements()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in have or name in out:
            continue
        if name not in lock:
            sys.exit(f"{req.name} is needed on the GPU machine but not in constraints.txt: run scripts/lock.sh")
        out[name] = lock[name]
        todo += [
            r for r in map(Requirement, requirements_of(name, lock[name])) if applies(r, tuple(req.extras) or ("",))
        ]
    return out


def requirements_of(name: str, version: str) -> list[str]:
    """Its Requires-Dist: from this virtualenv, or from its wheel's METADATA when it is not installed here (the
    `gpu` extra needs CUDA torch, so it is not)."""
    try:
        if metadata.version(name) == version:
            return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, f"{name}=={version}"],
            check=True,
            capture_output=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            text = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


if __name__ == "__main__":
    for name, version in sorted(needed().items()):
        print(f"{name}=={version}")
