"""Image references against Docker's grammar; build contexts confined to themselves."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from dockyard.images.context import ContextRejected, assemble_upload, check_image_directory
from dockyard.images.reference import InvalidReference, normalize_reference, parse_reference
from tests.images_admin.conftest import tar_of

DOCKERFILE = b"FROM debian:bookworm-slim\n"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("debian", "debian:latest"),
        ("debian:bookworm-slim", "debian:bookworm-slim"),
        ("dockyard/notebook:2024.06", "dockyard/notebook:2024.06"),
        ("registry.example.com:5000/team/spark:3.5", "registry.example.com:5000/team/spark:3.5"),
        ("localhost/a_b__c-d.e:V1_x", "localhost/a_b__c-d.e:V1_x"),
        ("[::1]:5000/x:1", "[::1]:5000/x:1"),
        ("team/x@sha256:" + "a" * 64, "team/x@sha256:" + "a" * 64),
        ("team/x:1@sha256:" + "b" * 64, "team/x:1@sha256:" + "b" * 64),
        ("  padded:1  ", "padded:1"),
    ],
)
def test_valid_references_are_normalized(given: str, expected: str) -> None:
    assert normalize_reference(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("", "give an image reference"),
        ("Team/Spark:1", "upper-case"),
        ("team//spark", "not a Docker image reference"),
        ("team/spark:", "not a Docker image reference"),
        ("team/spark:-bad", "not a Docker image reference"),
        ("-team/spark", "not a Docker image reference"),
        ("team/spark:" + "t" * 129, "not a Docker image reference"),
        ("team/x@sha256:abc", "not a Docker image reference"),
        ("team/sp ark", "not a Docker image reference"),
        ("team/spark;rm -rf /", "not a Docker image reference"),
        ("a/" + "b" * 260, "at most 255"),
    ],
)
def test_garbage_references_are_refused_with_a_reason(given: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_reference(given)


# -- uploads -------------------------------------------------------------------------


def _assemble(tmp_path: Path, *, dockerfile: bytes | None = None,
              archive: io.BytesIO | None = None, max_bytes: int = 1 << 20) -> Path:
    out = tmp_path / "context.tar"
    assemble_upload(
        out,
        dockerfile=io.BytesIO(dockerfile) if dockerfile is not None else None,
        archive=archive,
        max_bytes=max_bytes,
    )
    return out


def _names(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {member.name: member for member in tar.getmembers()}


def test_dockerfile_alone_makes_a_context(tmp_path: Path) -> None:
    names = _names(_assemble(tmp_path, dockerfile=DOCKERFILE))
    assert list(names) == ["Dockerfile"]


def test_gzip_archive_with_its_own_dockerfile(tmp_path: Path) -> None:
    archive = tar_of({"./Dockerfile": DOCKERFILE, "./src/app.py": b"print(1)\n"}, gz=True)
    names = _names(_assemble(tmp_path, archive=archive))
    assert set(names) == {"Dockerfile", "src/app.py"}


def test_uploaded_dockerfile_replaces_the_archives(tmp_path: Path) -> None:
    archive = tar_of({"Dockerfile": b"FROM scratch\n", "data.txt": b"x"})
    out = _assemble(tmp_path, dockerfile=DOCKERFILE, archive=archive)
    with tarfile.open(out) as tar:
        dockerfiles = [m for m in tar.getmembers() if m.name == "Dockerfile"]
        assert len(dockerfiles) == 1
        assert tar.extractfile(dockerfiles[0]).read() == DOCKERFILE  # type: ignore[union-attr]


def _archive_with(member: tarfile.TarInfo, data: bytes = b"") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(DOCKERFILE)
        tar.addfile(info, io.BytesIO(DOCKERFILE))
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    buffer.seek(0)
    return buffer


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("/etc/passwd"), "absolute path"),
        (_file("../outside.txt"), "leads outside the context"),
        (_file("src/../../outside.txt"), "leads outside the context"),
        (_link("escape", "/etc"), "leads outside"),
        (_link("escape", "../../etc/passwd"), "leads outside"),
        (_link("sub/escape", "../.."), "leads outside"),
        (_link("hard", "../x", tarfile.LNKTYPE), "leads outside"),
        (_link("dev", "", tarfile.CHRTYPE), "special file"),
        (_link("fifo", "", tarfile.FIFOTYPE), "special file"),
    ],
)
def test_members_escaping_the_context_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    data = b"x" if member.isfile() else b""
    with pytest.raises(ContextRejected, match=message) as caught:
        _assemble(tmp_path, archive=_archive_with(member, data))
    assert caught.value.field == "context"
    assert not (tmp_path / "context.tar").exists()


def test_nothing_may_be_reached_through_a_symlink(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, data in [
            (_file("Dockerfile"), DOCKERFILE),
            (_link("inner", "."), b""),  # points inside: fine on its own
            (_file("inner/x"), b"x"),  # but nothing is written through it
        ]:
            member.size = len(data) if member.isfile() else 0
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    buffer.seek(0)
    with pytest.raises(ContextRejected, match="reached through a link"):
        _assemble(tmp_path, archive=buffer)


def test_links_inside_the_context_are_kept(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = _file("Dockerfile")
        info.size = len(DOCKERFILE)
        tar.addfile(info, io.BytesIO(DOCKERFILE))
        tar.addfile(_link("lib/current", "../Dockerfile"))
    buffer.seek(0)
    names = _names(_assemble(tmp_path, archive=buffer))
    assert names["lib/current"].linkname == "../Dockerfile"


def test_setuid_bits_and_owners_are_dropped(tmp_path: Path) -> None:
    info = _file("tool")
    info.mode = 0o4755
    info.uid = 4242
    names = _names(_assemble(tmp_path, archive=_archive_with(info, b"x")))
    assert names["tool"].mode == 0o755
    assert names["tool"].uid == 0


@pytest.mark.parametrize(
    ("dockerfile", "archive", "field", "message"),
    [
        (None, None, "dockerfile", "send a Dockerfile"),
        (b"   \n", None, "dockerfile", "empty"),
        (b"\xff\xfe\x00", None, "dockerfile", "not UTF-8"),
        (None, io.BytesIO(b"this is not a tar archive at all" * 20), "context", "not a tar"),
        (None, tar_of({"src/app.py": b"1"}), "context", "no Dockerfile"),
    ],
)
def test_unusable_uploads_name_the_field(
    tmp_path: Path, dockerfile: bytes | None, archive: io.BytesIO | None, field: str,
    message: str,
) -> None:
    with pytest.raises(ContextRejected, match=message) as caught:
        _assemble(tmp_path, dockerfile=dockerfile, archive=archive)
    assert caught.value.field == field


def test_an_archive_expanding_beyond_the_cap_is_refused(tmp_path: Path) -> None:
    archive = tar_of({"Dockerfile": DOCKERFILE, "big.bin": b"\0" * 600_000}, gz=True)
    with pytest.raises(ContextRejected, match="expands to more than"):
        _assemble(tmp_path, archive=archive, max_bytes=100_000)


# -- project image directories ----------------------------------------------------------


def test_image_directory_must_be_offered_and_confined(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "good" / "files").mkdir(parents=True)
    (root / "good" / "Dockerfile").write_text("FROM x\n")
    (root / "common").mkdir()
    (root / "good" / "files" / "shared").symlink_to(root / "common")
    assert check_image_directory("good", ["good"], root) == root.resolve() / "good"

    with pytest.raises(ContextRejected, match="not one of the image directories"):
        check_image_directory("other", ["good"], root)
    with pytest.raises(ContextRejected, match="not one of"):
        check_image_directory("../good", ["good", "../good"], root)

    (root / "good" / "files" / "host").symlink_to("/etc")
    with pytest.raises(ContextRejected, match="symlink leading outside") as caught:
        check_image_directory("good", ["good"], root)
    assert caught.value.field == "directory"
