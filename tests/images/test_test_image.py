"""dockyard/test: it builds through Dockyard's build tooling and runs as the hub expects."""

from __future__ import annotations

import pytest

from tests.images.imagerun import (
    SYSTEM_FINGERPRINTS,
    ImageRunner,
    build_ca_bundle,
    pem_fingerprints,
)
from tests.images.test_notebook_image import check_jupyter_makes_no_calls_of_its_own
from tests.support.requirements import require_image

pytestmark = [pytest.mark.image, pytest.mark.docker]


def test_builds_with_dockyard_tooling() -> None:
    # The base must exist already (.ci/run makes it); the layers are normally cached, so
    # this checks the build path end to end in seconds.
    require_image("debian:bookworm-slim")
    from spawner.images.build import ImageBuild

    build = ImageBuild("test")
    lines = list(build.lines())
    result = build.result
    assert result is not None
    assert any(line.startswith("Step 1/") for line in lines)
    assert result.tags == [f"dockyard/test:{result.version}", "dockyard/test:latest"]
    assert result.size > 0

    import docker

    client = docker.from_env(timeout=30)
    try:
        image = client.images.get("dockyard/test:latest")
        assert image.id.endswith(result.image_id) or result.image_id in image.id
        assert image.labels["org.opencontainers.image.version"] == result.version
    finally:
        client.close()


def test_runs_as_uid_1000(test_image: ImageRunner) -> None:
    assert test_image.inspect()["Config"]["User"] == "1000"
    assert test_image.ok("id -u; id -g").split() == ["1000", "100"]


def test_data_client_imports(test_image: ImageRunner) -> None:
    out = test_image.ok(["python", "-c", "import dockyard_data, pyarrow; print('OK')"])
    assert out.strip().endswith("OK")


def test_singleuser_is_jupyterhub_6(test_image: ImageRunner) -> None:
    assert test_image.ok("jupyterhub-singleuser --version").strip().startswith("6.")


def test_fresh_named_volume_on_home_belongs_to_the_user(
    test_image: ImageRunner, fresh_volume: str
) -> None:
    out = test_image.ok("stat -c %u:%g /home/jovyan && touch /home/jovyan/x && echo OK",
                        volumes={fresh_volume: {"bind": "/home/jovyan", "mode": "rw"}})
    assert out.split() == ["1000:100", "OK"]


def test_default_command_is_the_singleuser_server_under_tini(test_image: ImageRunner) -> None:
    config = test_image.inspect()["Config"]
    assert config["Entrypoint"] == ["tini", "--"]
    assert config["Cmd"] == ["jupyterhub-singleuser"]
    assert config["WorkingDir"] == "/home/jovyan"


def test_jupyterlab_news_and_update_checks_are_off(test_image: ImageRunner) -> None:
    check_jupyter_makes_no_calls_of_its_own(test_image)


def test_build_ca_is_trusted(test_image: ImageRunner) -> None:
    out = test_image.ok(["python", "-c", SYSTEM_FINGERPRINTS])
    system = {line.split()[1] for line in out.splitlines() if line.startswith("FP ")}
    assert pem_fingerprints(build_ca_bundle()) <= system
