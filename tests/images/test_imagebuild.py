"""The image build tooling without an engine: contexts, versions, CA bundle, base script."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from spawner.images.build import (
    CA_NAME,
    IMAGES_DIR,
    BuildError,
    BuildStream,
    ContextError,
    ImageBuild,
    ImageSpec,
    available_images,
    collect_context,
    read_build_ca,
    write_context,
)
from spawner.images.facts import BuildFailed
from tests.support.requirements import require_image

MAKE_BASE = IMAGES_DIR / "base" / "make-base.sh"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def make_images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    (images / "test").mkdir(parents=True)
    (images / "test" / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    (images / "client" / "pkg" / "__pycache__").mkdir(parents=True)
    (images / "client" / "pkg" / "__init__.py").write_text("x = 1\n")
    (images / "client" / "pkg" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"0")
    (images / "client" / "pkg.egg-info").mkdir()
    (images / "client" / "pkg.egg-info" / "PKG-INFO").write_text("stale\n")
    (images / "common").mkdir()
    (images / "common" / "install-build-ca.sh").write_text("#!/bin/sh\n")
    (images / "unrelated").mkdir()
    (images / "unrelated" / "big.bin").write_bytes(b"x" * 10)
    return images


def spec(images: Path) -> ImageSpec:
    return available_images(images)["test"]


def names(images: Path, ca: bytes = b"") -> list[str]:
    return [entry.arcname for entry in collect_context(spec(images), ca)]


def test_context_holds_only_the_image_parts_and_no_caches(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    sent = names(images)
    assert "test/Dockerfile" in sent
    assert "client/pkg/__init__.py" in sent
    assert CA_NAME in sent
    assert not [n for n in sent if "__pycache__" in n or "egg-info" in n]
    assert not [n for n in sent if n.startswith("unrelated")]


def test_dockerignore_of_the_context_is_honoured(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    (images / "client" / "notes.txt").write_text("local notes\n")
    (images / ".dockerignore").write_text("# comment\nclient/notes.txt\n")
    assert "client/notes.txt" not in names(images)


def test_symlink_out_of_the_context_is_rejected(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    secret = tmp_path / "outside.txt"
    secret.write_text("not for the engine\n")
    (images / "client" / "link.txt").symlink_to(secret)
    with pytest.raises(ContextError, match="outside the build context"):
        names(images)


def test_symlink_inside_the_context_is_kept(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    (images / "client" / "alias.py").symlink_to(images / "client" / "pkg" / "__init__.py")
    assert "client/alias.py" in names(images)


def test_include_entries_cannot_climb_out(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    bad = ImageSpec("x", "dockyard/x", images, "test/Dockerfile", ("..",), "")
    with pytest.raises(ContextError, match="not a name"):
        collect_context(bad, b"")


def test_ca_bundle_travels_in_the_context_and_a_stale_one_on_disk_is_ignored(
    tmp_path: Path,
) -> None:
    images = make_images(tmp_path)
    (images / CA_NAME).write_bytes(b"stale")
    context, _ = write_context(collect_context(spec(images), PEM), {})
    with tarfile.open(fileobj=context) as tar:
        member = tar.extractfile(CA_NAME)
        assert member is not None
        assert member.read() == PEM
        assert tar.getnames().count(CA_NAME) == 1


def test_ca_goes_to_images_dir_for_a_repository_context(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    (images / "hub").mkdir()
    (images / "hub" / "Dockerfile").write_text("FROM debian:bookworm-slim\nCOPY images/ /x/\n")
    hub = available_images(images)["hub"]
    sent = [entry.arcname for entry in collect_context(hub, PEM)]
    assert "images/build-ca.crt" in sent
    assert CA_NAME not in sent
    assert "images/hub/Dockerfile" in sent


def test_version_follows_content_and_build_args_not_timestamps(tmp_path: Path) -> None:
    images = make_images(tmp_path)

    def version(args: dict[str, str] | None = None, ca: bytes = b"") -> str:
        return write_context(collect_context(spec(images), ca), args or {})[1]

    first = version()
    assert len(first) == 12
    assert version() == first
    os.utime(images / "client" / "pkg" / "__init__.py", (1, 1))
    assert version() == first, "a timestamp alone must not change the version"
    (images / "client" / "pkg" / "__init__.py").write_text("x = 2\n")
    changed = version()
    assert changed != first
    assert version({"HADOOP_AWS_JARS": "http://example.invalid/a.jar"}) != changed
    assert version(ca=PEM) != changed


def test_hub_image_offered_only_when_its_dockerfile_exists(tmp_path: Path) -> None:
    images = make_images(tmp_path)
    assert "hub" not in available_images(images)
    (images / "hub").mkdir()
    (images / "hub" / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    assert "hub" in available_images(images)


def test_unknown_image_is_one_clear_error() -> None:
    with pytest.raises(BuildError, match="unknown image 'nope'"):
        ImageBuild("nope")


def test_build_ca_sources(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(PEM)
    assert read_build_ca(bundle) == PEM
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    assert read_build_ca(empty) == b""
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(BuildError, match="not a PEM bundle"):
        read_build_ca(junk)
    with pytest.raises(BuildError, match="cannot read"):
        read_build_ca(tmp_path / "missing.pem")


def mirror(apt: Path, suite: str) -> str:
    script = f'source "{MAKE_BASE}"; host_mirror "{suite}" "{apt}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_base_mirror_from_deb822_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://old.invalid/debian\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    (apt / "sources.list.d" / "disabled.sources").write_text(
        "Enabled: no\nTypes: deb\nURIs: http://off.invalid/debian\nSuites: trixie\n"
    )
    assert mirror(apt, "bookworm") == "http://mirror.invalid/debian"
    assert mirror(apt, "bookworm-security") == "http://security.invalid/debian-security"
    assert mirror(apt, "trixie") == ""


def test_base_mirror_from_one_line_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n"
    )
    assert mirror(apt, "bookworm") == "http://mirror.invalid/debian"


@pytest.mark.docker
def test_make_base_is_a_no_op_when_the_tag_exists() -> None:
    require_image("debian:bookworm-slim")
    done = subprocess.run(["bash", str(MAKE_BASE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "already present; nothing to do" in done.stdout


def test_cli_without_an_engine_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from dockyard.cli import main

    # Nothing listens on port 1 of the loopback address.
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    result = CliRunner().invoke(main, ["images", "build", "test"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(
        "dockyard: no Docker engine answered"
    )


def test_cli_rejects_an_unknown_image() -> None:
    from click.testing import CliRunner

    from dockyard.cli import main

    result = CliRunner().invoke(main, ["images", "build", "nope"])
    assert result.exit_code == 2
    assert "unknown image nope" in result.output


@pytest.mark.docker
def test_failing_step_is_reported_with_its_step(tmp_path: Path) -> None:
    require_image("debian:bookworm-slim")
    images = make_images(tmp_path)
    (images / "test" / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\nRUN echo about to fail && exit 3\n"
    )
    build = ImageBuild("test", images_dir=images)
    lines: list[str] = []
    with pytest.raises(BuildError) as failed:
        for line in build.lines():
            lines.append(line)
    message = str(failed.value)
    assert message.startswith("building dockyard/test failed at Step 2/")
    assert "non-zero code: 3" in message
    assert "about to fail" in lines
    assert build.result is None


def test_build_stream_reads_lines_across_chunks_and_both_ways_of_naming_the_image() -> None:
    classic = BuildStream([
        {"stream": "Step 1/2 : FROM debian\n"},
        {"stream": "\x1b[1mhalf a "}, {"stream": "line\x1b[0m\n"},
        {"status": "Downloading", "progress": "[==>  ]"},
        {"aux": {"ID": "sha256:0123456789abcdef"}},
        {"stream": "Successfully built 0123456789ab\n"},
    ])
    assert list(classic.lines()) == [
        "Step 1/2 : FROM debian", "half a line", "Downloading [==>  ]",
        "Successfully built 0123456789ab",
    ]
    assert classic.image_id == "sha256:0123456789abcdef"  # the full id, when both are sent

    legacy = BuildStream([{"stream": "Successfully built 0123456789ab"}])
    assert list(legacy.lines()) == ["Successfully built 0123456789ab"]
    assert legacy.image_id == "0123456789ab"

    nothing = BuildStream([{"stream": "done\n"}])
    assert list(nothing.lines()) == ["done"] and nothing.image_id == ""


def test_build_stream_ends_with_the_engines_reason() -> None:
    failing = BuildStream([
        {"stream": "about to fail"},
        {"errorDetail": {"message": "step one\nreturned a non-zero code: 3"}, "error": "x"},
    ])
    lines: list[str] = []
    with pytest.raises(BuildFailed) as failed:
        lines.extend(failing.lines())
    assert lines == ["about to fail"]
    assert str(failed.value) == "step one\nreturned a non-zero code: 3"
