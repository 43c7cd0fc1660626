"""The production compose file and the documented environment, checked without a registry."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
ENV_EXAMPLE = (ROOT / "compose" / ".env.example").read_text()


def test_it_runs_the_five_services_and_a_docker_socket_proxy():
    services = COMPOSE["services"]
    assert {"postgres", "redis", "web", "worker", "beat", "docker-proxy"} <= set(services)
    assert "daphne" in " ".join(services["web"]["command"])
    assert services["worker"]["command"][:4] == ["celery", "-A", "agentide", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "agentide", "beat"]


def test_only_the_socket_proxy_mounts_the_docker_socket():
    for name, service in COMPOSE["services"].items():
        mounts = " ".join(str(v) for v in service.get("volumes", []))
        if name == "docker-proxy":
            assert "/var/run/docker.sock:/var/run/docker.sock:ro" in mounts
        else:
            assert "docker.sock" not in mounts, name
    for name in ("worker", "beat"):
        assert COMPOSE["services"][name]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert COMPOSE["networks"]["docker"]["internal"] is True
    assert "docker" not in COMPOSE["services"]["web"]["networks"]


def test_the_socket_proxy_allows_only_what_the_sandbox_backend_calls():
    proxy = COMPOSE["services"]["docker-proxy"]["environment"]
    allowed = {name for name, value in proxy.items() if str(value) == "1"}
    assert allowed == {"CONTAINERS", "EXEC", "VOLUMES", "VERSION", "PING", "POST", "DELETE",
                       "PUT", "ALLOW_START", "ALLOW_STOP", "ALLOW_EXEC", "ALLOW_ARCHIVE",
                       "ALLOW_LOGS"}
    # Sections the proxy grants by default, and the dangerous ones, are denied explicitly.
    for name in ("EVENTS", "IMAGES", "INFO", "BUILD", "COMMIT", "AUTH", "SECRETS", "SWARM",
                 "SYSTEM", "PLUGINS", "NETWORKS", "ALLOW_KILL", "ALLOW_ATTACH", "ALLOW_EXPORT"):
        assert str(proxy[name]) == "0", name
    # It cannot inspect create bodies: the compose file and the README say what remains.
    compose_text = (ROOT / "compose" / "docker-compose.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for text in (compose_text, readme):
        assert "privileged" in text and "bind-mount" in text


def test_app_services_run_the_production_profile_on_postgres_and_redis():
    for name in ("web", "worker", "beat"):
        env = COMPOSE["services"][name]["environment"]
        assert env["AGENTIDE_PROFILE"] == "production"
        assert env["DATABASE_URL"].startswith("postgres://")
        assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert "pgdata" in COMPOSE["volumes"]
    assert COMPOSE["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]


def test_every_variable_the_code_reads_is_documented_in_env_example():
    read = set()
    for path in (ROOT / "agentide").rglob("*.py"):
        read |= set(
            re.findall(
                r"env_(?:str|bool|int|float|list|required)\(\s*\"([A-Z][A-Z0-9_]+)\"",
                path.read_text(),
            )
        )
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, re.MULTILINE))
    internal = {"AGENTIDE_TEST_FAST_HASHER"}
    assert sorted(read - documented - internal) == []


def test_a_privileged_disks_service_makes_the_workspace_images_for_the_worker():
    services = COMPOSE["services"]
    disks = services["disks"]
    assert disks["command"][:3] == ["python", "manage.py", "serve_workspace_disks"]
    assert disks["privileged"] is True
    assert disks["network_mode"] == "none"
    assert "networks" not in disks
    assert disks["user"] == "root"
    # The worker's uid (the app image's user) owns the socket.
    assert disks["command"][3:] == ["--socket-owner", "10001"]
    assert "--uid 10001 agentide" in (ROOT / "compose" / "Dockerfile").read_text()

    # The image directory: the same path on the host and inside, its mounts shared back to
    # the host, so the engine finds the mount points the worker names in bind volumes.
    workspace_dir = disks["environment"]["AGENTIDE_SANDBOX_WORKSPACE_DIR"]
    (images,) = [v for v in disks["volumes"]
                 if isinstance(v, dict) and v.get("target") == workspace_dir]
    assert images["type"] == "bind"
    assert images["source"] == workspace_dir
    assert images["bind"]["propagation"] == "rshared"

    # One socket, in a named volume that the disks service, the worker and beat share.
    socket_path = disks["environment"]["AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET"]
    socket_dir = socket_path.rsplit("/", 1)[0]
    assert f"disksock:{socket_dir}" in disks["volumes"]
    assert "disksock" in COMPOSE["volumes"]
    for name in ("worker", "beat"):
        service = services[name]
        assert service["environment"]["AGENTIDE_SANDBOX_WORKSPACE_DISK_SOCKET"] == socket_path
        assert f"disksock:{socket_dir}" in service["volumes"]
        assert "appdata:/var/lib/agentide" in service["volumes"]
        assert "privileged" not in service
    assert "disks" in services["worker"]["depends_on"]
    # Nothing else sees the socket.
    for name in ("web", "postgres", "redis", "docker-proxy"):
        assert "disksock" not in " ".join(str(v) for v in services[name].get("volumes", []))


def test_the_app_image_has_the_tools_to_make_workspace_images():
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert re.search(r"apt-get install[^\n]*\be2fsprogs\b[^\n]*\bmount\b", dockerfile)
