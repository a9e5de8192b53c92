"""The compose files as a fleet needs them, read as YAML (no Compose CLI needed; test_compose.py renders them):
no folder shared between the API and the workers, the object store and its bucket made before either starts,
and a GPU host's file that runs workers only and stops on a missing setting.
"""

from __future__ import annotations

import re
from functools import cache

import pytest

from app.core.settings import Settings
from tests.conftest import ROOT

STACK, FLEET, GPU_HOST = "docker-compose.yml", "docker-compose.fleet.yml", "docker-compose.gpu-host.yml"


@cache
def load(name: str) -> dict:
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is needed to read the compose files (pip install pyyaml)")
    return yaml.safe_load((ROOT / name).read_text())  # safe_load resolves the `<<: *anchor` merges


def is_worker(service: dict) -> bool:
    return service.get("build", {}).get("dockerfile", "").endswith("worker.Dockerfile")


def named_volumes(service: dict) -> set[str]:
    sources = (v.split(":")[0] if isinstance(v, str) else v.get("source") for v in service.get("volumes", []))
    return {s for s in sources if s and not s.startswith((".", "/", "~"))}  # bind mounts are not named volumes


def conditions(service: dict) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def test_api_and_workers_share_no_volume():
    services = load(STACK)["services"]
    workers = {name: s for name, s in services.items() if is_worker(s)}
    assert {"preview", "worker-gpu0", "worker-gpu1"} <= set(workers)
    assert "artifacts" not in load(STACK)["volumes"]
    for name, worker in workers.items():
        assert not named_volumes(services["api"]) & named_volumes(worker), name
    # each worker's cache is its own: no worker reads another's half-written files
    caches = [_cache_volume(w) for w in workers.values()]
    assert len(set(caches)) == len(caches), caches


def _cache_volume(worker: dict) -> str:
    target = worker["environment"]["FTAAS_CACHE_DIR"]
    (source,) = [v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == target]
    return source


def test_object_store_and_bucket_come_first():
    services = load(STACK)["services"]
    minio, bucket = services["minio"], services["bucket"]
    for image in (minio["image"], bucket["image"]):
        assert re.fullmatch(r"minio/(minio|mc):RELEASE\.[0-9TZ-]+", image), f"pin the image's tag: {image}"
    assert minio["healthcheck"]["test"]
    assert conditions(bucket) == {"minio": "service_healthy"}
    assert "mc mb --ignore-existing" in " ".join(bucket["command"])  # idempotent: a restart of the stack is fine
    for name, service in services.items():
        if name == "api" or is_worker(service):
            assert conditions(service).get("bucket") == "service_completed_successfully", name


def test_every_process_gets_the_store_settings():
    services = load(STACK)["services"]
    for name in ("migrate", "api", *(n for n, s in services.items() if is_worker(s))):
        env = services[name]["environment"]
        assert env["FTAAS_STORE_URL"].startswith("s3://"), name
        assert env["FTAAS_S3_ENDPOINT"] == "http://minio:9000", name
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env), name
    # MinIO's root user is the one ftaas signs with: one value, through a YAML anchor
    minio_env = services["minio"]["environment"]
    assert minio_env["MINIO_ROOT_USER"] == services["api"]["environment"]["AWS_ACCESS_KEY_ID"]
    assert minio_env["MINIO_ROOT_PASSWORD"] == services["api"]["environment"]["AWS_SECRET_ACCESS_KEY"]


def test_gpu_host_runs_workers_only():
    services = load(GPU_HOST)["services"]
    assert services and all(is_worker(s) for s in services.values()), set(services)
    assert not {"postgres", "redis", "api", "migrate", "minio", "bucket", "preview"} & set(services)
    for name, worker in services.items():
        assert "depends_on" not in worker, name  # everything it needs is on another host
        assert worker["command"] == ["ftaas", "worker", "--gpu", "0"]
        assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
        assert "${GPU_HOST_NAME:?" in worker["hostname"], "a worker's name must be unique across hosts"
    hostnames = [w["hostname"] for w in services.values()]
    assert len(set(hostnames)) == len(hostnames)


def test_gpu_host_settings_are_required():
    env = load(GPU_HOST)["services"]["worker-gpu0"]["environment"]
    required = (
        "FTAAS_DATABASE_URL",
        "FTAAS_BROKER_URL",
        "FTAAS_STORE_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    for var in required:
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", env[var]), f"{var} must be ${{{var}:?message}}: {env[var]}"
    # empty is a valid endpoint (AWS S3 itself), so only an unset one stops compose
    assert re.fullmatch(r"\$\{FTAAS_S3_ENDPOINT\?[^}]+\}", env["FTAAS_S3_ENDPOINT"])
    assert env["FTAAS_CACHE_DIR"] == load(STACK)["services"]["worker-gpu0"]["environment"]["FTAAS_CACHE_DIR"]


def test_fleet_file_publishes_the_shared_services_on_a_chosen_address():
    services = load(FLEET)["services"]
    assert set(services) == {"postgres", "redis", "minio"}
    for name, service in services.items():
        (port,) = service["ports"]
        assert port.startswith("${FLEET_BIND_ADDRESS:?"), f"{name} must not listen on every interface: {port}"


def test_compose_settings_are_settings():
    """Every FTAAS_* variable the compose files set is a field of app/core/settings.py (a typo would be ignored)."""
    fields = {f"FTAAS_{name.upper()}" for name in Settings.model_fields}
    for name in (STACK, GPU_HOST):
        for service in load(name)["services"].values():
            unknown = {k for k in service.get("environment", {}) if k.startswith("FTAAS_")} - fields
            assert not unknown, f"{name}: not settings: {unknown}"


def test_every_process_caches_where_its_image_lets_it_write():
    """The images run as the `ftaas` user, which may write only what they made its own (docker/*.Dockerfile):
    /var/lib/ftaas and, in the worker image, /var/cache/ftaas. The default ./var/cache (under the root-owned
    /opt/ftaas) would make the API's first upload fail."""
    for name in (STACK, GPU_HOST):
        for service_name, service in load(name)["services"].items():
            env = service.get("environment") or {}
            if service.get("command") and "ftaas" in service["command"][:1]:
                cache = env.get("FTAAS_CACHE_DIR", "")
                assert cache.startswith(("/var/lib/ftaas", "/var/cache/ftaas")), f"{name} {service_name}: {cache!r}"
