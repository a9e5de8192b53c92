"""docker-compose.yml renders with a real Compose CLI (`config`), and the rendered stack is the intended one.

Needs `docker compose` (v2 plugin) or `docker-compose` (>= 1.29, e.g. Debian's `apt-get install
docker-compose`); no Docker engine is needed, `config` only parses, interpolates and validates.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import cache

import pytest

from tests.conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = {"postgres", "redis", "migrate", "api", "preview", "worker-gpu0", "worker-gpu1"}
WORKERS = {"worker-gpu0": "0", "worker-gpu1": "1"}


@cache
def compose_cli() -> tuple[str, ...] | None:
    """`docker compose` when the v2 plugin works, else `docker-compose`, else None."""
    if shutil.which("docker"):
        try:
            probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            probe = None
        if probe is not None and probe.returncode == 0:
            return ("docker", "compose")
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    return None


def _cli() -> tuple[str, ...]:
    cli = compose_cli()
    if cli is None:
        pytest.fail(
            "no Compose CLI found: install the Docker Compose v2 plugin (`docker compose`) or "
            "docker-compose >= 1.29 (Debian/Ubuntu: `apt-get install -y docker-compose`)"
        )
    return cli


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: no COMPOSE_FILE / COMPOSE_PROFILES / stack variables leaking in from the shell.
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "FTAAS_", "POSTGRES_")) and k != "HF_TOKEN"
    }
    clean.update(env or {})
    proc = subprocess.run(
        [*_cli(), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    command = " ".join([*_cli(), *args])
    assert proc.returncode == 0, f"{command} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def rendered(*args: str, env: dict[str, str] | None = None) -> dict:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is needed to parse the rendered compose config (pip install pyyaml)")
    return yaml.safe_load(compose(*args, "config", env=env).stdout)


GPU2 = ("--profile", "gpu2")


def _volume_targets(service: dict) -> dict[str, str]:
    """target -> source for named volumes, from short ("src:dst:rw") or long ({source, target}) syntax."""
    out = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol.get("source"), vol["target"]
        out[target] = source
    return out


def _conditions(service: dict) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), f"depends_on without conditions: {deps!r}"
    return {name: spec["condition"] for name, spec in deps.items()}


def test_compose_cli_available():
    cli = _cli()
    version = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    if cli == ("docker-compose",):
        # depends_on: condition: service_completed_successfully needs docker-compose >= 1.29.
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", version.stdout)
        assert match and tuple(map(int, match.groups())) >= (1, 29, 0), version.stdout


def test_missing_cli_fails_with_install_hint(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    compose_cli.cache_clear()
    try:
        with pytest.raises(pytest.fail.Exception, match="apt-get install -y docker-compose"):
            _cli()
    finally:
        compose_cli.cache_clear()


def test_config_renders_default_and_gpu2_profile():
    compose("config", "--quiet")
    compose(*GPU2, "config", "--quiet")
    listed = set(compose(*GPU2, "config", "--services").stdout.split())
    assert listed == SERVICES
    if compose_cli() == ("docker", "compose"):
        # Compose v2 leaves profiled services out unless their profile is active (v1's
        # `config --services` lists every service, so this is only checkable on v2).
        assert set(compose("config", "--services").stdout.split()) == SERVICES - {"worker-gpu1"}


def test_rendered_services_and_dependencies():
    cfg = rendered(*GPU2)
    services = cfg["services"]
    assert set(services) == SERVICES

    assert services["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert _volume_targets(services["postgres"])["/var/lib/postgresql/data"] == "pgdata"
    assert services["redis"]["image"] == "redis:7"
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])

    migrate = services["migrate"]
    assert migrate["command"] == ["ftaas", "migrate"]
    assert migrate["restart"] in ("no", False)  # YAML 1.1 readers may turn an unquoted `no` into False
    assert _conditions(migrate) == {"postgres": "service_healthy"}

    api = services["api"]
    assert api["command"] == ["ftaas", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # several API processes (uvicorn workers), a number that keeps their pools under Postgres' max_connections
    assert int(api["environment"]["FTAAS_WEB_WORKERS"]) == 4
    assert _conditions(api) == {"migrate": "service_completed_successfully", "redis": "service_healthy"}
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    (port,) = api["ports"]
    if isinstance(port, str):
        assert port.split("/")[0] == "8000:8000"
    else:
        assert (str(port["published"]), int(port["target"])) == ("8000", 8000)
    assert _volume_targets(api)["/var/lib/ftaas"] == "artifacts"
    assert api["build"]["dockerfile"].endswith("docker/api.Dockerfile")
    assert migrate["image"] == api["image"]

    assert {"pgdata", "artifacts", "hf-cache"} <= set(cfg["volumes"])


def test_rendered_gpu_workers():
    services = rendered(*GPU2)["services"]
    for name, gpu in WORKERS.items():
        worker = services[name]
        assert worker["command"] == ["ftaas", "worker", "--gpu", "0"], name
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["device_ids"] == [gpu]
        assert "gpu" in device["capabilities"]
        volumes = _volume_targets(worker)
        assert volumes["/var/lib/ftaas"] == "artifacts"
        assert volumes["/var/cache/huggingface"] == "hf-cache"
        assert worker["environment"]["HF_HOME"] == "/var/cache/huggingface"
        assert "HF_TOKEN" in worker["environment"]
        assert worker["build"]["dockerfile"].endswith("docker/worker.Dockerfile")
        assert _conditions(worker)["migrate"] == "service_completed_successfully"
    assert services["worker-gpu0"].get("profiles") in (None, [])
    assert services["worker-gpu1"]["profiles"] == ["gpu2"]
    assert services["worker-gpu0"]["hostname"] != services["worker-gpu1"]["hostname"]


def test_rendered_preview_worker():
    """The preview worker: the worker image and its volumes (uploads, the model cache) on the CPU."""
    preview = rendered()["services"]["preview"]
    assert preview["command"] == ["ftaas", "preview-worker"]
    assert "deploy" not in preview  # no GPU reserved
    assert preview["build"]["dockerfile"].endswith("docker/worker.Dockerfile")
    volumes = _volume_targets(preview)
    assert volumes["/var/lib/ftaas"] == "artifacts" and volumes["/var/cache/huggingface"] == "hf-cache"
    assert _conditions(preview)["migrate"] == "service_completed_successfully"


def test_rendered_environment_and_interpolation():
    services = rendered(*GPU2)["services"]
    for name in ("migrate", "api", "preview", *WORKERS):
        env = services[name]["environment"]
        assert env["FTAAS_DATABASE_URL"] == "postgresql+psycopg://ftaas:ftaas@postgres:5432/ftaas", name
        assert env["FTAAS_BROKER_URL"] == "redis://redis:6379/0"
        assert env["FTAAS_ARTIFACTS_DIR"] == "/var/lib/ftaas"
        assert env["FTAAS_ALLOWED_MODELS"] == ("meta-llama/Llama-3.2-1B,google/gemma-2b-it,meta-llama/Llama-2-7b-hf")
    assert services["worker-gpu0"]["environment"]["HF_TOKEN"] in ("", None)

    services = rendered(
        *GPU2,
        env={"POSTGRES_PASSWORD": "s3cret", "FTAAS_ALLOWED_MODELS": "a/b,c/d", "HF_TOKEN": "hf_test"},
    )["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert services["api"]["environment"]["FTAAS_DATABASE_URL"] == (
        "postgresql+psycopg://ftaas:s3cret@postgres:5432/ftaas"
    )
    assert services["worker-gpu1"]["environment"]["FTAAS_ALLOWED_MODELS"] == "a/b,c/d"
    assert services["worker-gpu1"]["environment"]["HF_TOKEN"] == "hf_test"


def test_dockerfiles():
    api = (ROOT / "docker" / "api.Dockerfile").read_text()
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()

    def code(text: str) -> str:  # Dockerfile lines without comments
        return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))

    api, worker = code(api), code(worker)

    assert re.search(r"^FROM python:3\.11-slim\b", api, re.M)
    # both images install at the lock's versions (constraints.txt), as scripts/install.sh does
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", api)
    assert "[worker" not in api and "torch" not in api
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime$", worker, re.M)
    assert re.search(r"^ARG EXTRAS=worker,gpu$", worker, re.M)  # the GPU image gets the fused kernels
    assert 'pip install -c /tmp/torch-constraint.txt -c constraints.txt ".[${EXTRAS}]"' in worker
    for text in (api, worker):
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), "images must run as a non-root user"
        assert "--uid 10001" in text  # same uid in both: they share the artifacts volume
