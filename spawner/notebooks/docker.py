"""DockyardDockerSpawner: a notebook server in a container on one Docker engine.

DockerSpawner with Dockyard's choices (image and resource profile, checked on the server),
storage (a home volume per user, the team's /shared volume), limits and hardening, and the
changes a login burst needs:

- Docker calls run on a bounded pool of threads, each with its own API client, instead
  of DockerSpawner's single thread per class, behind which twenty spawns queue.
- ``start()`` returns once the server answers, found by a cheap connect probe and then
  one HTTP request that the server answers as soon as its loop runs; the hub's own wait
  (exponential back-off up to 5 s, 30 s limit) then succeeds at its first try. A
  container that exits fails the spawn at once, with its last log lines.
- Timeouts are generous (``DOCKYARD_NOTEBOOK_START_TIMEOUT``): a slow start on a busy
  machine is not a failure.

It takes plain values only: profiles as dicts of ``NotebookProfile`` fields, and an
``ImageSource`` that says which images are on offer (the hub configuration,
``hub/spawners.py``, sets both).
"""

from __future__ import annotations

import asyncio
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.utils import kwargs_from_env
from dockerspawner import DockerSpawner
from jupyterhub.spawner import SpawnException
from tornado import web
from traitlets import (
    Bool,
    Dict,
    Float,
    Instance,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)

from spawner.environment import CONTAINER_DATA_ROOT, CONTAINER_GID, CONTAINER_UID
from spawner.notebooks.images import ImageNotOffered, ImageSource, NotebookImage
from spawner.notebooks.options import (
    InvalidChoice,
    NotebookChoice,
    asks_for_last_choice,
    choose_profile,
    last_choice,
    options_from_form,
    render_form,
    requested_image,
)
from spawner.notebooks.profiles import NotebookProfile
from spawner.notebooks.progress import StartProgress

# Docker calls of all spawns share this pool. Sixteen threads let a burst of spawns create
# and start their containers side by side (the engine serialises what it must itself)
# while bounding the connections we hold open to it.
DOCKER_THREADS = 16
_docker_pool = ThreadPoolExecutor(DOCKER_THREADS, thread_name_prefix="dockyard-docker")
_thread_clients = threading.local()

SERVER_LABEL = "dockyard.notebook"
VOLUME_LABEL = "dockyard.volume"


def negotiated_api_version(timeout: int = 10) -> str:
    """Ask the engine once which API version to speak, so that no client made later has
    to (the negotiation is a blocking call, and some clients live on the hub's loop)."""
    client = docker.APIClient(version="auto", timeout=timeout, **kwargs_from_env())
    try:
        return str(client.api_version)
    finally:
        client.close()


class SpawnFailed(SpawnException):
    """The server cannot start; the message tells the user why (on the progress page and
    in the API's answer, instead of JupyterHub's bare "Internal Server Error")."""

    def __init__(self, message: str, *, reason: str, status_code: int = 500) -> None:
        super().__init__(message, reason=reason, status_code=status_code)


class DockyardDockerSpawner(DockerSpawner):
    """A notebook server in a container on one Docker engine."""

    image_source = Instance(
        ImageSource, allow_none=True, config=True,
        help="Where the images a user may start from come from (offered(), resolve()).",
    )
    profiles = List(
        Dict(), config=True, help="Resource profiles (NotebookProfile fields); first is default."
    )
    name_prefix = Unicode(
        "dockyard", config=True, help="Prefix of containers and volumes ({dockyard} in templates)."
    )
    home_volume = Unicode(
        "{dockyard}-home-{username}", config=True, help="Name of a user's home volume."
    )
    home_dir = Unicode("/home/jovyan", config=True, help="Where the home volume is mounted.")
    shared_volume = Unicode("{dockyard}-shared", config=True, help="The team's shared volume.")
    shared_dir = Unicode("/shared", config=True, help="Where the shared volume is mounted.")
    shared_writable = Bool(False, config=True, help="Mount the shared volume read-write.")
    data_root = Unicode(
        "", config=True,
        help=f"Host directory of a local data root, mounted read-write at {CONTAINER_DATA_ROOT} "
        "so the data client writes its batches there (empty for s3:// roots).",
    )
    notebook_uid = Int(CONTAINER_UID, config=True, help="User id the server runs as (never 0).")
    notebook_gid = Int(CONTAINER_GID, config=True, help="Group id the server runs as.")
    probe_interval = Float(
        0.02, config=True,
        help="Seconds between connect probes while a server starts; stretched when many "
        "servers start at once, so that probing never costs the hub much CPU.",
    )

    _waiting_servers = 0  # servers of all spawners now being probed (class-wide)

    @validate("notebook_uid")
    def _never_root(self, proposal: Any) -> int:
        if proposal.value == 0:
            raise TraitError("notebook_uid: notebook servers never run as root (uid 0)")
        return int(proposal.value)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choice: NotebookChoice | None = None
        self._volumes_ready: asyncio.Future[list[str]] | None = None
        self._image_info: dict[str, Any] | None = None
        self._chosen: dict[str, str] = {}  # image and profile, as kept in the hub's state
        self._progress = StartProgress()

    # -- Docker access: a shared bounded pool, one client per thread ---------------------
    @property
    def executor(self) -> ThreadPoolExecutor:  # type: ignore[override]
        return _docker_pool

    @property
    def client(self) -> docker.APIClient:  # type: ignore[override]
        client = getattr(_thread_clients, "client", None)
        if client is None:
            kwargs: dict[str, Any] = {"version": "auto", **kwargs_from_env(), **self.client_kwargs}
            client = _thread_clients.client = docker.APIClient(**kwargs)
        return client

    # -- names -------------------------------------------------------------------------
    @default("name_template")
    def _default_name_template(self) -> str:
        # '--' cannot occur in an escaped user name (escaping turns '-' into '-2d'), so
        # the user and server parts of the name never run into each other.
        return "{dockyard}-nb-{username}--{servername}" if self.name else "{dockyard}-nb-{username}"

    def template_namespace(self) -> dict[str, str]:
        namespace = super().template_namespace()
        # DockerSpawner lower-cases server names before escaping, so 'Spark' and 'spark'
        # (names made before JupyterHub 6 allowed only lower case) would share a
        # container; escaping alone keeps them apart ('-53park', 'spark').
        namespace["servername"] = self.escape(self.name or "")
        namespace["dockyard"] = self.name_prefix
        return namespace

    # -- what the user may choose ------------------------------------------------------
    @cached_property
    def notebook_profiles(self) -> list[NotebookProfile]:
        return [NotebookProfile(**profile) for profile in self.profiles]

    @default("options_form")
    def _default_options_form(self) -> Any:
        async def form(spawner: DockyardDockerSpawner) -> str:
            images = await asyncio.to_thread(spawner.image_source.offered)
            previous = spawner.orm_spawner.user_options if spawner.orm_spawner else None
            return render_form(images, spawner.notebook_profiles, previous=previous)

        return form

    @default("options_from_form")
    def _default_options_from_form(self) -> Any:
        async def from_form(formdata: dict[str, list[str]], spawner: DockyardDockerSpawner) -> dict:
            try:
                options = options_from_form(formdata)
            except InvalidChoice as exc:
                raise web.HTTPError(400, str(exc)) from None
            # Checked here as well as before start, so that a bad choice comes back on
            # the form with its message instead of on the progress page.
            await spawner.resolve_choice(options)
            return options

        return from_form

    def options_from_query(self, query_data: dict[str, list[str]]) -> Any:
        if asks_for_last_choice(query_data):
            return self.last_choice()
        return self.options_from_form(query_data, spawner=self)

    async def last_choice(self) -> dict[str, str]:
        """The options of a one-click start: the user's last choice while it is offered,
        else the default (a 400 with the reason when nothing may start)."""
        images = await asyncio.to_thread(self.image_source.offered)
        previous = self.orm_spawner.user_options if self.orm_spawner else None
        try:
            options = last_choice(previous, images, self.notebook_profiles)
        except InvalidChoice as exc:
            raise web.HTTPError(400, str(exc)) from None
        await self.resolve_choice(options)
        return options

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        async def apply(spawner: DockyardDockerSpawner, user_options: dict) -> None:
            spawner.apply_choice(await spawner.resolve_choice(user_options))

        return apply

    async def resolve_choice(self, user_options: dict[str, Any]) -> NotebookChoice:
        """The image and profile ``user_options`` ask for, checked against what the
        image source offers now; anything else is a 400 with a message to act on."""
        def lookup() -> NotebookImage:
            images = self.image_source.offered()
            return self.image_source.resolve(requested_image(user_options, images))

        try:
            image = await asyncio.to_thread(lookup)
            profile = choose_profile(user_options, image, self.notebook_profiles)
        except (ImageNotOffered, InvalidChoice) as exc:
            raise web.HTTPError(400, str(exc)) from None
        return NotebookChoice(image, profile)

    def apply_choice(self, choice: NotebookChoice) -> None:
        self.choice = choice
        self.image = choice.image.reference
        self.mem_limit = choice.memory_bytes
        self.cpu_limit = choice.profile.cpus
        self.extra_create_kwargs = {
            "user": f"{self.notebook_uid}:{self.notebook_gid}",
            "working_dir": self.home_dir,
            "labels": self.object_labels(),
        }
        self.extra_host_config = {
            "security_opt": ["no-new-privileges"],
            "cap_drop": ["ALL"],
            "pids_limit": choice.profile.pids,
            "memswap_limit": choice.memory_bytes,  # no swap beyond the memory limit
            # Kept after it stops so that a failed start can be explained from its log;
            # stop() and the next start() remove it.
            "auto_remove": False,
        }

    async def check_allowed(self, image: str) -> str:
        # DockerSpawner's own allow-list check; ours ran before start (resolve_choice).
        if self.choice is None or image != self.choice.image.reference:
            raise web.HTTPError(400, f"Image '{image}' was not checked; start the server again.")
        return image

    def object_labels(self) -> dict[str, str]:
        return {SERVER_LABEL: "true", "dockyard.prefix": self.name_prefix,
                "dockyard.user": self.user.name, "dockyard.server": self.name or ""}

    # -- environment -------------------------------------------------------------------
    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env["HOME"] = self.home_dir
        if self.choice is not None:
            env["DOCKYARD_PROFILE"] = self.choice.profile.name
        return env

    # -- storage -----------------------------------------------------------------------
    @default("volumes")
    def _default_volumes(self) -> dict[str, Any]:
        volumes: dict[str, Any] = {
            self.home_volume: {"bind": self.home_dir, "mode": "rw"},
            self.shared_volume: {"bind": self.shared_dir,
                                 "mode": "rw" if self.shared_writable else "ro"},
        }
        if self.data_root:
            volumes[self.data_root] = {"bind": CONTAINER_DATA_ROOT, "mode": "rw"}
        return volumes

    def volumes_to_own(self) -> dict[str, str]:
        """Volumes the notebook user must be able to write: name -> mount point."""
        owned = {self.format_volume_name(self.home_volume, self): self.home_dir}
        if self.shared_writable:
            owned[self.format_volume_name(self.shared_volume, self)] = self.shared_dir
        return owned

    async def ensure_volumes(self) -> list[str]:
        """Create missing volumes (labelled, so they can be found); return the new ones."""
        home = self.format_volume_name(self.home_volume, self)

        async def ensure(name: str) -> str | None:
            try:
                await self.docker("inspect_volume", name)
                return None
            except NotFound:
                labels = {VOLUME_LABEL: "true", "dockyard.prefix": self.name_prefix}
                if name == home:
                    labels["dockyard.user"] = self.user.name
                # Creating an existing volume is a no-op, so a race with the user's other
                # server starting at the same moment is harmless.
                await self.docker("create_volume", name, labels=labels)
                return name

        names = [self.format_volume_name(v, self) for v in self.volumes]
        named = [n for n in names if not n.startswith("/")]  # not host directories
        return [n for n in await asyncio.gather(*(ensure(n) for n in named)) if n]

    async def owner_of(self, container_id: str, path: str) -> tuple[int, int]:
        """Owner of ``path`` in a created (not started) container, read from the first
        header of the archive Docker streams; the rest is never read."""
        def first_header() -> tuple[int, int]:
            stream, _stat = self.client.get_archive(container_id, path, chunk_size=512)
            try:
                block = b""
                for chunk in stream:
                    block += chunk
                    if len(block) >= tarfile.BLOCKSIZE:
                        break
            finally:
                stream.close()
            info = tarfile.TarInfo.frombuf(block[: tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
            return info.uid, info.gid

        return await asyncio.wrap_future(self.executor.submit(first_header))

    async def give_volume_to_user(self, volume: str, path: str) -> None:
        """Make a volume's files the notebook user's: a one-shot container of the same
        image, as root but with only the capabilities chown needs, no network."""
        self.log.info("Giving volume %s to uid %s", volume, self.notebook_uid)
        owner = f"{self.notebook_uid}:{self.notebook_gid}"
        host_config = self.client.create_host_config(
            binds={volume: {"bind": path, "mode": "rw"}},
            cap_drop=["ALL"], cap_add=["CHOWN", "DAC_READ_SEARCH", "FOWNER"],
            security_opt=["no-new-privileges"], network_mode="none",
        )
        container = await self.docker(
            "create_container", self.image, entrypoint=["chown"], command=["-R", owner, path],
            user="0:0", host_config=host_config, labels={**self.object_labels(),
                                                        "dockyard.volume-init": "true"},
        )
        try:
            await self.docker("start", container["Id"])
            result = await self.docker("wait", container["Id"], timeout=120)
            if result.get("StatusCode") != 0:
                logs = await self.docker("logs", container["Id"], tail=5)
                raise SpawnFailed(f"Could not prepare volume {volume}: "
                                  f"{logs.decode(errors='replace').strip()}", reason="volume")
        finally:
            await self.docker("remove_container", container["Id"], force=True)

    async def prepare_before_create(self, fresh: list[str]) -> None:
        """Hook for engines that cannot look inside a container before it runs."""

    async def prepare_after_create(self, obj: dict[str, Any], fresh: list[str]) -> None:
        # A fresh named volume takes the content and ownership of the image's directory
        # when the container is created; an image whose directory is not the notebook
        # user's (or that has none) would leave the home unwritable, so check and fix.
        for volume, path in self.volumes_to_own().items():
            if volume not in fresh:
                continue
            uid, _gid = await self.owner_of(obj["Id"], path)
            if uid != self.notebook_uid:
                await self.give_volume_to_user(volume, path)

    # -- progress --------------------------------------------------------------------
    def _note(self, progress: int, message: str) -> None:
        self.log.debug("%s: %s", self._log_name, message)
        self._progress.note(progress, message)

    async def progress(self) -> AsyncIterator[dict[str, Any]]:
        async for step in self._progress.follow():
            yield step

    # -- lifecycle -------------------------------------------------------------------
    async def create_object(self) -> dict[str, Any]:
        fresh = await self._volumes_ready if self._volumes_ready else []
        self._note(30, "Creating the container")
        await self.prepare_before_create(fresh)
        obj = await super().create_object()
        await self.prepare_after_create(obj, fresh)
        return obj

    async def pull_image(self, image: str) -> None:
        if self.pull_policy in ("always", "skip"):
            await super().pull_image(image)
            return
        try:
            # Kept: get_command() needs the image's command.
            self._image_info = await self.docker("inspect_image", image)
            return
        except NotFound:
            if self.pull_policy == "never":
                # The person can act on this (choose another image), so it is a 400 with
                # a message rather than a spawn failure the hub reports as a 500.
                raise web.HTTPError(
                    400, f"Image {image} is not on the Docker engine; choose another image, "
                    "or ask an admin to build or load it on the Images page.") from None
        try:
            await super().pull_image(image)
        except APIError as exc:
            raise SpawnFailed(f"Image {image} is not on the Docker engine and could not be "
                              f"pulled: {exc.explanation or exc}", reason="image-missing",
                              status_code=400) from None

    async def get_command(self) -> list[str]:
        info, self._image_info = self._image_info, None
        if self.cmd or not info:
            return await super().get_command()
        return [*(info["Config"]["Cmd"] or []), *self.get_args()]

    async def start(self) -> tuple[str, int]:
        self._progress.start_over()
        try:
            if self.choice is None:  # never applied (e.g. a call from outside the hub)
                self.apply_choice(await self.resolve_choice(self.user_options or {}))
            profile = self.choice.profile
            self._note(10, f"Preparing {self.choice.image.reference} "
                           f"({profile.description or profile.name}) and storage")
            # Volumes are made while DockerSpawner checks the image and looks for a stale
            # container; create_object() waits for them.
            self._volumes_ready = asyncio.ensure_future(self.ensure_volumes())
            ip, port = await super().start()
            self._note(60, "Container started; waiting for Jupyter to answer")
            await self.wait_until_answering(ip, port)
            self._note(95, "Jupyter answered")
            return ip, port
        finally:
            if self._volumes_ready and not self._volumes_ready.done():
                self._volumes_ready.cancel()
            self._volumes_ready = None
            self._progress.finish()
            # Streams waiting for a step take the last ones now, before the hub can end
            # the spawn: JupyterHub's iterate_until() stops at the spawn's end and drops
            # the step a stream is still waiting for.
            await asyncio.sleep(0)

    async def wait_until_answering(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP; fail at once if its container stops."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_check = started + 1.0
        url_path = f"{self.server.base_url}api" if self.server else "/api"
        cls = DockyardDockerSpawner
        cls._waiting_servers += 1
        try:
            while True:
                if await server_answers(ip, port, url_path):
                    return
                if loop.time() >= next_check:
                    status = await self.poll()
                    if status is not None:
                        report = await self.exit_report(status)
                        # The hub does not stop a server that has already exited, so the
                        # container (kept until now for its log) goes here.
                        await self.remove_object()
                        self.object_id = ""
                        raise SpawnFailed(report, reason="exited")
                    elapsed = int(loop.time() - started)
                    self._note(60 + min(elapsed, 30),
                               f"Waiting for Jupyter to answer ({elapsed} s)")
                    next_check = loop.time() + 2.0
                # Probe less often when many servers start at once: each of them is then
                # slower anyway, and the hub needs its CPU share for the rest of the work.
                crowd = max(1.0, cls._waiting_servers / 4)
                await asyncio.sleep(min(0.5, self.probe_interval * crowd))
        finally:
            cls._waiting_servers -= 1

    async def exit_report(self, status: Any) -> str:
        try:
            logs = await self.docker("logs", self.object_id, tail=15)
            tail = logs.decode(errors="replace").strip()
        except APIError:
            tail = "(no log)"
        return (f"The notebook server stopped before it answered ({status}). "
                f"Last lines of its log:\n{tail}")

    async def stop(self, now: bool = False) -> None:
        if not self.object_id:
            # Never created, or already removed: find it by name, or there is nothing to do.
            if await self.get_object() is None:
                self.clear_state()
                return
        await super().stop(now=now)

    # -- state kept across hub restarts ------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.object_id:
            if self.choice is not None:
                self._chosen = {"image": self.choice.image.reference,
                                "profile": self.choice.profile.name}
            state.update(self._chosen)
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        # After a hub restart: what the adopted server was started with, kept for the
        # state the hub writes back.
        self._chosen = {key: state[key] for key in ("image", "profile") if key in state}
        if "image" in self._chosen:
            self.image = self._chosen["image"]

    def clear_state(self) -> None:
        super().clear_state()
        self.choice = None
        self._chosen = {}
        # The hub calls this when the server has stopped and again as it prepares the next
        # spawn, before start(): from here a progress stream waits for that start.
        self._progress.start_over()


async def server_answers(ip: str, port: int, path: str,
                         accept: Callable[[int], bool] = lambda status: status < 500) -> bool:
    """Does the server answer ``GET path`` with a status ``accept`` takes (by default any
    but a server error)? A refused connect costs microseconds, so probe with that; once
    the port accepts, one HTTP request waits for the server's first answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=2)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=60)
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and accept(int(parts[1]))

