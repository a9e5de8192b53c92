"""The compose files render with a real Compose CLI (`config`), and the rendered stack is the intended one:
docker-compose.yml alone, with docker-compose.fleet.yml, and a GPU host's docker-compose.gpu-host.yml.

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
FLEET_FILE = ROOT / "docker-compose.fleet.yml"
GPU_HOST_FILE = ROOT / "docker-compose.gpu-host.yml"
SERVICES = {"postgres", "redis", "minio", "bucket", "migrate", "api", "preview", "worker-gpu0", "worker-gpu1"}
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


STACK_VARIABLES = ("COMPOSE_", "FTAAS_", "POSTGRES_", "REDIS_", "MINIO_", "AWS_", "GPU_HOST_", "FLEET_", "HF_TOKEN")


def compose(
    *args: str, env: dict[str, str] | None = None, files=(COMPOSE_FILE,), check: bool = True
) -> subprocess.CompletedProcess[str]:
    # A clean environment: no COMPOSE_FILE / COMPOSE_PROFILES / stack variables leaking in from the shell.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(STACK_VARIABLES)}
    clean.update(env or {})
    proc = subprocess.run(
        [*_cli(), *(arg for f in files for arg in ("-f", str(f))), *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    command = " ".join([*_cli(), *args])
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0 or not check, f"{command} exited {proc.returncode}\n{output}"
    return proc


def rendered(*args: str, env: dict[str, str] | None = None, files=(COMPOSE_FILE,)) -> dict:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is needed to parse the rendered compose config (pip install pyyaml)")
    return yaml.safe_load(compose(*args, "config", env=env, files=files).stdout)


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
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "ftaas"  # the healthcheck's password
    assert services["redis"]["command"][-2:] == ["--requirepass", "ftaas"]
    assert _conditions(services["bucket"]) == {"minio": "service_healthy"}
    assert _volume_targets(services["minio"])["/data"] == "miniodata"

    migrate = services["migrate"]
    assert migrate["command"] == ["ftaas", "migrate"]
    assert migrate["restart"] in ("no", False)  # YAML 1.1 readers may turn an unquoted `no` into False
    assert _conditions(migrate) == {"postgres": "service_healthy"}

    api = services["api"]
    assert api["command"] == ["ftaas", "serve", "--host", "0.0.0.0", "--port", "8000"]
    # several API processes (uvicorn workers), a number that keeps their pools under Postgres' max_connections
    assert int(api["environment"]["FTAAS_WEB_WORKERS"]) == 4
    assert _conditions(api) == {
        "migrate": "service_completed_successfully",
        "redis": "service_healthy",
        "bucket": "service_completed_successfully",
    }
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    (port,) = api["ports"]
    if isinstance(port, str):
        assert port.split("/")[0] == "8000:8000"
    else:
        assert (str(port["published"]), int(port["target"])) == ("8000", 8000)
    assert _volume_targets(api) == {"/var/lib/ftaas/data": "api-data"}  # its own state only, no artifacts
    assert api["build"]["dockerfile"].endswith("docker/api.Dockerfile")
    assert migrate["image"] == api["image"]

    assert {"pgdata", "miniodata", "api-data", "hf-cache"} <= set(cfg["volumes"])
    assert "artifacts" not in cfg["volumes"]


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
        assert volumes == {"/var/cache/ftaas": f"cache-gpu{gpu}", "/var/cache/huggingface": "hf-cache"}
        assert worker["environment"]["FTAAS_CACHE_DIR"] == "/var/cache/ftaas"
        assert worker["environment"]["HF_HOME"] == "/var/cache/huggingface"
        assert "HF_TOKEN" in worker["environment"]
        assert worker["build"]["dockerfile"].endswith("docker/worker.Dockerfile")
        assert _conditions(worker)["migrate"] == "service_completed_successfully"
        assert _conditions(worker)["bucket"] == "service_completed_successfully"
    assert services["worker-gpu0"].get("profiles") in (None, [])
    assert services["worker-gpu1"]["profiles"] == ["gpu2"]
    assert services["worker-gpu0"]["hostname"] != services["worker-gpu1"]["hostname"]


def test_rendered_preview_worker():
    """The preview worker: the worker image, its own cache and the model cache, on the CPU."""
    preview = rendered()["services"]["preview"]
    assert preview["command"] == ["ftaas", "preview-worker"]
    assert "deploy" not in preview  # no GPU reserved
    assert preview["build"]["dockerfile"].endswith("docker/worker.Dockerfile")
    volumes = _volume_targets(preview)
    assert volumes == {"/var/cache/ftaas": "preview-cache", "/var/cache/huggingface": "hf-cache"}
    assert _conditions(preview)["migrate"] == "service_completed_successfully"


def test_rendered_environment_and_interpolation():
    services = rendered(*GPU2)["services"]
    for name in ("migrate", "api", "preview", *WORKERS):
        env = services[name]["environment"]
        assert env["FTAAS_DATABASE_URL"] == "postgresql+psycopg://ftaas:ftaas@postgres:5432/ftaas", name
        assert env["FTAAS_BROKER_URL"] == "redis://:ftaas@redis:6379/0"
        assert env["FTAAS_ARTIFACTS_DIR"] == "/var/lib/ftaas"
        assert env["FTAAS_STORE_URL"] == "s3://ftaas"
        assert env["FTAAS_S3_ENDPOINT"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("ftaas", "ftaas-minio")
        assert env["FTAAS_ALLOWED_MODELS"] == ("meta-llama/Llama-3.2-1B,google/gemma-2b-it,meta-llama/Llama-2-7b-hf")
    assert services["worker-gpu0"]["environment"]["HF_TOKEN"] in ("", None)

    services = rendered(
        *GPU2,
        env={
            "POSTGRES_PASSWORD": "s3cret",
            "REDIS_PASSWORD": "r3dis",
            "MINIO_ROOT_USER": "store-user",
            "MINIO_ROOT_PASSWORD": "store-s3cret",
            "FTAAS_ALLOWED_MODELS": "a/b,c/d",
            "HF_TOKEN": "hf_test",
        },
    )["services"]
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "r3dis"
    assert services["worker-gpu0"]["environment"]["FTAAS_BROKER_URL"] == "redis://:r3dis@redis:6379/0"
    assert services["minio"]["environment"] == {"MINIO_ROOT_USER": "store-user", "MINIO_ROOT_PASSWORD": "store-s3cret"}
    for name in ("bucket", "api", "worker-gpu1"):
        env = services[name]["environment"]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("store-user", "store-s3cret"), name
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    assert services["api"]["environment"]["FTAAS_DATABASE_URL"] == (
        "postgresql+psycopg://ftaas:s3cret@postgres:5432/ftaas"
    )
    assert services["worker-gpu1"]["environment"]["FTAAS_ALLOWED_MODELS"] == "a/b,c/d"
    assert services["worker-gpu1"]["environment"]["HF_TOKEN"] == "hf_test"


GPU_HOST_ENV = {
    "GPU_HOST_NAME": "gpu-a",
    "FTAAS_DATABASE_URL": "postgresql+psycopg://ftaas:pw@10.0.0.5:5432/ftaas",
    "FTAAS_BROKER_URL": "redis://:pw@10.0.0.5:6379/0",
    "FTAAS_STORE_URL": "s3://ftaas",
    "FTAAS_S3_ENDPOINT": "http://10.0.0.5:9000",
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
}


def test_gpu_host_renders_with_its_settings():
    services = rendered(*GPU2, env=GPU_HOST_ENV, files=(GPU_HOST_FILE,))["services"]
    assert set(services) == set(WORKERS)
    for name, gpu in WORKERS.items():
        worker = services[name]
        assert worker["hostname"] == f"gpu-a-gpu{gpu}"
        env = worker["environment"]
        for var in ("FTAAS_DATABASE_URL", "FTAAS_BROKER_URL", "FTAAS_STORE_URL", "FTAAS_S3_ENDPOINT"):
            assert env[var] == GPU_HOST_ENV[var], var
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("key", "secret")
        assert _volume_targets(worker) == {"/var/cache/ftaas": f"cache-gpu{gpu}", "/var/cache/huggingface": "hf-cache"}
    # AWS S3 itself: an empty endpoint is accepted
    env = rendered(env={**GPU_HOST_ENV, "FTAAS_S3_ENDPOINT": ""}, files=(GPU_HOST_FILE,))["services"]["worker-gpu0"]
    assert env["environment"]["FTAAS_S3_ENDPOINT"] in ("", None)


@pytest.mark.parametrize("missing", sorted(GPU_HOST_ENV))
def test_gpu_host_stops_on_a_missing_setting(missing):
    env = {k: v for k, v in GPU_HOST_ENV.items() if k != missing}
    proc = compose("config", "--quiet", env=env, files=(GPU_HOST_FILE,), check=False)
    assert proc.returncode != 0, f"config rendered without {missing}"
    assert f"set {missing}" in proc.stderr, proc.stderr  # the message says which variable, and what to put there


def test_fleet_publishes_postgres_redis_and_minio_on_the_given_address():
    files = (COMPOSE_FILE, FLEET_FILE)
    proc = compose("config", "--quiet", files=files, check=False)
    assert proc.returncode != 0 and "set FLEET_BIND_ADDRESS" in proc.stderr, proc.stderr
    services = rendered(env={"FLEET_BIND_ADDRESS": "10.0.0.5"}, files=files)["services"]
    for name, port in (("postgres", 5432), ("redis", 6379), ("minio", 9000)):
        (published,) = services[name]["ports"]
        if isinstance(published, str):
            assert published.split("/")[0] == f"10.0.0.5:{port}:{port}", name
        else:
            assert (published["host_ip"], int(published["published"]), published["target"]) == ("10.0.0.5", port, port)
    assert "max_connections=300" in services["postgres"]["command"]
    assert "ports" not in rendered()["services"]["postgres"]  # the single-host stack publishes none of them


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
    base = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda[\d.]+-cudnn\d+-runtime$", worker, re.M)
    assert base and tuple(map(int, base.groups())) >= (2, 11), "torch.nn.attention.varlen (packed rows) needs 2.10+"
    # the build stops when the GPU fast path is missing, after the install and before the user switch
    check = worker.index("RUN python -m worker.training.kernels.fast_path")
    assert worker.index("pip install") < check < worker.index("USER ")
    assert re.search(r"^ARG EXTRAS=worker,gpu$", worker, re.M)  # the GPU image gets the fused kernels
    assert 'pip install -c /tmp/torch-constraint.txt -c constraints.txt ".[${EXTRAS}]"' in worker
    for text in (api, worker):
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), "images must run as a non-root user"
        assert "--uid 10001" in text  # a fixed uid, which the images' folders (and so their volumes) belong to
