"""Installs are reproducible: every package this environment holds that constraints.txt names is at the locked
version, and the lock covers every dependency the project declares (so a fresh machine resolves nothing new)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT


def locked() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.split(r"==", line, maxsplit=1)
            out[canonicalize_name(name)] = version.strip()
    return out


def test_installed_packages_are_the_locked_versions():
    lock = locked()
    drifted = {
        name: (dist.version, lock[name])
        for dist in metadata.distributions()
        if (name := canonicalize_name(dist.metadata["Name"])) in lock and dist.version != lock[name]
    }
    assert not drifted, f"installed (version, locked) differ: {drifted}; install with -c constraints.txt"


def test_every_declared_dependency_is_locked():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    lock = locked()
    missing = sorted(
        req.name
        for req in map(Requirement, declared)
        if canonicalize_name(req.name) != "torch" and canonicalize_name(req.name) not in lock
    )
    assert not missing, f"not in constraints.txt: {missing}; run scripts/lock.sh"
    assert "torch" not in lock, "torch is pinned by scripts/install.sh (CPU or CUDA build), not by the lock"
