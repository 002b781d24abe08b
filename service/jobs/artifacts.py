"""A job's files as clients may fetch them: by artifact name, or by a path inside the job's
folder (the relative links of its report), never anything outside it."""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from service.errors import InvalidInput, NotFound
from service.jobs.core import JobInfo
from service.validation import check_text

# 32 KiB: well under any message size limit a server is given (16 MiB by default), and
# large enough that a report's picture takes a few messages
CHUNK_BYTES = 32 * 1024


def job_folder(job: JobInfo) -> Path | None:
    """The folder holding the job's outputs: the deepest one holding all its artifacts."""
    parents = [str(Path(a.path).parent) for a in job.artifacts if a.path]
    if not parents:
        return None
    return Path(os.path.commonpath(parents))


def artifact_file(job: JobInfo, name: str) -> tuple[Path, str]:
    """(file, media type) of ``name``: an artifact's name, else a relative path inside the
    job's folder. NotFound for anything else, including paths that leave the folder through
    ``..`` or a symbolic link."""
    check_text(name, "artifact name", max_chars=1024)
    for a in job.artifacts:
        if a.name == name and Path(a.path).is_file():
            return Path(a.path), a.media_type or _media(a.path)
    folder = job_folder(job)
    if folder is None:
        raise NotFound(f"job {job.id} has no artifacts yet")
    if Path(name).is_absolute() or "\\" in name:
        raise InvalidInput("artifact name must be a relative path inside the job's folder")
    root = folder.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFound(f"job {job.id} has no artifact {name!r}")
    return path, _media(path)


def _media(path: str | Path) -> str:
    return mimetypes.guess_type(str(path))[0] or "application/octet-stream"


def read_chunks(path: Path, size: int = CHUNK_BYTES):
    """The file's bytes in pieces of at most ``size``, opened now (so that a file gone
    between the lookup and the read fails the lookup's call, not the stream midway)."""
    f = open(path, "rb")  # noqa: SIM115  (closed by the generator)

    def chunks():
        with f:
            while piece := f.read(size):
                yield piece

    return chunks()
