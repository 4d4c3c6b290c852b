"""A notebook job's files, brought into the Lab workspace from Dockyard: the executed
notebook, its HTML rendering and the input snapshot, downloaded through the API into
``jobs/<notebook>-dockyard-<run id>/`` when the user asks for them."""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from jupyter_scheduler.job_files_manager import JobFilesManager

from dockyard_scheduler.runs import ARTIFACT_OF_FORMAT, run_id_of

TRUE_TEXTS = ("true", "True", "1")


class DockyardJobFilesManager(JobFilesManager):
    async def copy_from_staging(self, job_id: str, redownload: Any = False) -> None:
        # The handler passes the query argument as text ("false" must mean false).
        again = redownload is True or redownload in TRUE_TEXTS
        scheduler = self.scheduler
        job = await scheduler.get_job(job_id, False)
        filenames = scheduler.get_job_filenames(job)
        directory = scheduler.get_local_output_path(job)
        run_id = run_id_of(job_id)
        for file_format in [*job.output_formats, "input"]:
            target = os.path.join(directory, os.path.basename(filenames[file_format]))
            if os.path.exists(target) and not again:
                continue
            artifact = ARTIFACT_OF_FORMAT[file_format]
            content = await asyncio.to_thread(
                scheduler.api.download, f"/runs/{run_id}/artifacts/{artifact}")
            if content is not None:  # e.g. no output.ipynb when the run never started
                write_file(target, content)


def write_file(path: str, content: bytes) -> None:
    """Write whole or not at all: a half-written notebook never shows in the file browser."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=directory, prefix=".dockyard-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.unlink(partial)
        raise
