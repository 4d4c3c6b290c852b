"""How the hub is configured for notebooks, and what the spawner makes of a choice,
checked without starting a hub or a container."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets import TraitError
from traitlets.config import Config

from dockyard.runtime import RuntimeChoice
from dockyard.settings import DEFAULT_NOTEBOOK_PROFILES, Settings
from hub import spawners
from hub.hubconfig import configure_hub
from spawner.notebooks.docker import DockyardDockerSpawner
from spawner.notebooks.images import NotebookImage
from spawner.notebooks.options import NotebookChoice
from spawner.notebooks.swarm import DockyardSwarmSpawner

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "172.31.0.1"


def configured(settings: Settings, spawner: str, monkeypatch: pytest.MonkeyPatch,
               job_backend: str = "local", **changes: Any) -> Config:
    monkeypatch.setattr(spawners, "negotiated_api_version", lambda: "1.41")
    settings = settings.model_copy(update={"hub_connect_ip": GATEWAY, **changes})
    c = Config()
    runtime = RuntimeChoice(spawner, job_backend, "team/nb:1", ())
    configure_hub(c, settings, runtime, python="/venv/bin/python", repo=REPO, environ={})
    return c


def service(c: Config, name: str) -> dict[str, Any]:
    return next(s for s in c.JupyterHub.services if s["name"] == name)


def test_docker_notebooks_reach_dockyard_at_the_gateway(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = configured(settings, "docker", monkeypatch, spark_master="spark://m:7077",
                   ray_address="ray://r:10001", named_servers=2, shared_writable=True)
    assert c.JupyterHub.spawner_class == "spawner.notebooks.docker.DockyardDockerSpawner"
    assert c.JupyterHub.hub_ip == GATEWAY and c.JupyterHub.hub_connect_ip == GATEWAY
    assert c.JupyterHub.ip == "127.0.0.1"  # the public proxy stays on loopback
    web = service(c, "dockyard")
    assert web["url"] == f"http://{GATEWAY}:{settings.web_port}"
    assert web["command"][-2:] == ["--bind", GATEWAY]
    env = c.Spawner.environment
    assert env["DOCKYARD_URL"] == f"http://{GATEWAY}:{settings.web_port}/services/dockyard/"
    assert env["SPARK_MASTER"] == "spark://m:7077" and env["RAY_ADDRESS"] == "ray://r:10001"
    assert env["DOCKYARD_DATA_ROOT"] == "/dockyard/data"  # where the local root is mounted
    assert "access:services!service=dockyard" in c.Spawner.server_token_scopes
    assert c.JupyterHub.allow_named_servers is True
    assert c.JupyterHub.named_server_limit_per_user == 2
    assert c.JupyterHub.cleanup_servers is False
    assert c.Spawner.start_timeout == settings.notebook_start_timeout
    section = c.DockyardDockerSpawner
    assert section.image_source.db_url == settings.db_url
    assert section.image_source.fallback_image == "team/nb:1"
    assert section.use_internal_ip is True and section.remove is True
    assert section.shared_writable is True
    assert [p["name"] for p in section.profiles] == ["small", "large"]
    assert "dockyard_dev_mode_note" not in c.JupyterHub.template_vars.get_value({})


def test_swarm_uses_the_swarm_spawner(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    c = configured(settings, "swarm", monkeypatch)
    assert c.JupyterHub.spawner_class == "spawner.notebooks.swarm.DockyardSwarmSpawner"


def test_local_processes_are_labelled_development_mode(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = configured(settings, "local", monkeypatch, named_servers=0)
    assert c.JupyterHub.spawner_class == "jupyterhub.spawner.SimpleLocalProcessSpawner"
    note = c.JupyterHub.template_vars.get_value({})["dockyard_dev_mode_note"]
    assert "Development mode" in note and "without containers" in note
    assert c.Spawner.environment["DOCKYARD_URL"] == settings.base_url + "/services/dockyard/"
    assert service(c, "dockyard")["command"][-2:] == ["--bind", "127.0.0.1"]
    assert c.JupyterHub.allow_named_servers is False


def test_job_containers_alone_also_move_the_web_service_to_the_gateway(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = configured(settings, "local", monkeypatch, job_backend="docker")
    assert service(c, "dockyard")["command"][-2:] == ["--bind", GATEWAY]


def test_idle_culler_follows_the_timeout_setting(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = configured(settings, "docker", monkeypatch, idle_timeout=1800)
    command = service(c, "idle-culler")["command"]
    assert "--timeout=1800" in command and "--cull-every=180" in command
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == "idle-culler"]
    assert sorted(role["scopes"]) == ["delete:servers", "list:users", "read:servers",
                                      "read:users:activity"]


def make_spawner(cls: type = DockyardDockerSpawner, server: str = "", user: str = "alice",
                 **traits: Any) -> Any:
    orm = SimpleNamespace(name=server, user_options=None, server=None, state=None)
    owner = SimpleNamespace(name=user, url=f"/user/{user}/", base_url=f"/user/{user}/")
    return cls(user=owner, orm_spawner=orm, name_prefix="dy", **traits)


def test_container_and_volume_names_never_collide() -> None:
    assert make_spawner().object_name == "dy-nb-alice"
    assert make_spawner(server="spark").object_name == "dy-nb-alice--spark"
    # a user named like another's server, and legacy mixed-case server names, stay apart
    assert make_spawner(user="alice-spark").object_name == "dy-nb-alice-2dspark"
    assert make_spawner(server="Spark").object_name != make_spawner(server="spark").object_name
    binds = make_spawner(server="spark").volume_binds
    assert binds == {"dy-home-alice": {"bind": "/home/jovyan", "mode": "rw"},
                     "dy-shared": {"bind": "/shared", "mode": "ro"}}
    assert make_spawner(shared_writable=True).volume_binds["dy-shared"]["mode"] == "rw"


def test_a_choice_becomes_limits_and_hardening() -> None:
    spawner = make_spawner()
    spawner.apply_choice(NotebookChoice(NotebookImage("team/nb:1", ""),
                                        DEFAULT_NOTEBOOK_PROFILES[1]))
    assert spawner.image == "team/nb:1"
    assert spawner.mem_limit == 8 * 1024**3 and spawner.cpu_limit == 2.0
    assert spawner.extra_host_config["security_opt"] == ["no-new-privileges"]
    assert spawner.extra_host_config["cap_drop"] == ["ALL"]
    assert spawner.extra_host_config["pids_limit"] == 2048
    assert spawner.extra_create_kwargs["user"] == "1000:100"
    assert spawner.extra_create_kwargs["labels"]["dockyard.user"] == "alice"


def test_swarm_mounts_named_volumes_and_limits_processes() -> None:
    spawner = make_spawner(DockyardSwarmSpawner)
    spawner.apply_choice(NotebookChoice(NotebookImage("team/nb:1", ""),
                                        DEFAULT_NOTEBOOK_PROFILES[0]))
    assert spawner.network_name == "dy-notebooks" and spawner.use_internal_ip
    assert [(m["Source"], m["Type"], m["ReadOnly"]) for m in spawner.mounts] == [
        ("dy-home-alice", "volume", False), ("dy-shared", "volume", True)]
    resources = spawner.extra_task_spec["resources"]
    assert resources["Limits"] == {"MemoryBytes": 2 * 1024**3, "NanoCPUs": 1_000_000_000,
                                   "Pids": 1024}
    assert spawner.extra_container_spec["cap_drop"] == ["ALL"]
    assert spawner.extra_container_spec["user"] == "1000:100"


def test_docker_calls_of_many_spawns_run_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """DockerSpawner runs every Docker call of a spawner class on one thread; ours share a
    pool with a client per thread, so eight slow calls all run at once (the barrier only
    opens when all eight are inside)."""
    barrier = threading.Barrier(8, timeout=10)

    def slow_call(self: Any, method: str, *args: Any, **kwargs: Any) -> tuple[int, int]:
        barrier.wait()
        return threading.get_ident(), id(self.client)

    monkeypatch.setattr(DockyardDockerSpawner, "_docker", slow_call)
    monkeypatch.setattr(DockyardDockerSpawner, "client_kwargs", {"version": "1.41"})
    spawners = [make_spawner(user=f"u{i}") for i in range(8)]

    async def all_at_once() -> list[tuple[int, int]]:
        return await asyncio.gather(*(s.docker("inspect_container", "x") for s in spawners))

    results = asyncio.run(all_at_once())
    assert len({thread for thread, _ in results}) == 8
    assert len({client for _, client in results}) == 8


def test_root_is_refused_as_the_notebook_user() -> None:
    with pytest.raises(TraitError, match="never run as root"):
        make_spawner(notebook_uid=0)


def test_an_adopted_server_keeps_its_recorded_choice() -> None:
    """After a hub restart the spawner knows its container from the saved state, and
    writes the image and profile back unchanged."""
    spawner = make_spawner()
    state = {"object_id": "abc123", "object_name": "dy-nb-alice", "image": "team/nb:1",
             "profile": "large"}
    spawner.load_state(state)
    assert spawner.object_id == "abc123" and spawner.image == "team/nb:1"
    assert spawner.get_state() == state
    spawner.clear_state()
    assert "image" not in spawner.get_state()


def test_a_local_data_root_is_mounted_for_the_data_client(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = configured(settings, "docker", monkeypatch)
    assert c.DockyardDockerSpawner.data_root == settings.data_dir
    assert c.Spawner.environment["DOCKYARD_DATA_ROOT"] == "/dockyard/data"
    spawner = make_spawner(data_root=settings.data_dir)
    assert spawner.volume_binds[settings.data_dir] == {"bind": "/dockyard/data", "mode": "rw"}
    on_s3 = configured(settings, "docker", monkeypatch, data_root="s3://bucket/data")
    assert on_s3.Spawner.environment["DOCKYARD_DATA_ROOT"] == "s3://bucket/data"
    assert "data_root" not in on_s3.DockyardDockerSpawner
