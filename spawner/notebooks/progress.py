"""StartProgress: the steps of a notebook server's start, kept for the spawn page's progress
stream (its progress bar and messages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class StartProgress:
    """The steps of a server's latest start, for the spawn page's progress stream.

    JupyterHub counts a spawn pending from the request until the server is ready, and
    streams progress to whoever opens the spawn page in that time: before it calls
    ``start()`` (while it applies the options and runs its hooks), during ``start()``, or
    after it (while it checks the server and adds its route). Each of them must see every
    step, so a start's steps are kept until the next spawn is prepared, and a stream opened
    before ``start()`` waits for it instead of ending with nothing.
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.finished = False
        self._changed = asyncio.Event()

    def note(self, progress: int, message: str) -> None:
        self.steps.append({"progress": progress, "message": message})
        self._changed.set()

    def finish(self) -> None:
        self.finished = True
        self._changed.set()

    def start_over(self) -> None:
        """Drop the last start's steps: those that follow are the next start's, and a
        stream waiting for it follows them from the first."""
        self.steps = []
        self.finished = False
        self._changed.set()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every step of the current start from its first, then the next ones as they
        come, until the start has finished."""
        steps, sent = self.steps, 0
        while True:
            if self.steps is not steps:  # the next start began: follow it from its first step
                steps, sent = self.steps, 0
            # Steps already recorded go out with no await in between: JupyterHub's
            # iterate_until() stops once the spawn is over and drops whatever its stream
            # would have had to wait for, but a step that needs no wait is never dropped.
            while sent < len(steps):
                yield steps[sent]
                sent += 1
            if self.finished:
                return
            self._changed.clear()
            await self._changed.wait()

