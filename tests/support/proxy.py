"""A proxy that tests cut to make a server go away: a database, a Docker engine."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path


class PausableProxy:
    """Forwards 127.0.0.1:<port> (or a Unix socket at ``listen_path``) to a server at
    ``target`` (host and port, or a Unix socket's path); ``cut()`` drops every connection
    and refuses new ones (what clients see when a database or a Docker engine goes away),
    ``restore()`` listens again at the same address."""

    def __init__(self, target: tuple[str, int] | str, listen_path: Path | None = None) -> None:
        self.target = target
        self.listen_path = listen_path
        self._listener: socket.socket | None = None
        self.port = 0
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self.connections = 0

    def start(self) -> None:
        if self.listen_path is not None:
            self.listen_path.unlink(missing_ok=True)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(self.listen_path))
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            self.port = listener.getsockname()[1]
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by cut()
            try:
                if isinstance(self.target, str):
                    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    server.connect(self.target)
                else:
                    server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(pair)

    def _close(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            self._pairs.discard(pair)
        for end in pair:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            end.close()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not,
            # and that thread would go on accepting on the old socket.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close(pair)

    def restore(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except OSError:  # the old socket may linger a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
