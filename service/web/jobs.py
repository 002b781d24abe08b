"""HTTP routes of JobService: kinds and their parameters, submit, list, get, cancel, a job's
files, and images uploaded for a job's parameters."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
import typing
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import FileResponse

from service.errors import InvalidInput
from service.jobs.artifacts import artifact_file, job_folder
from service.jobs.core import JobInfo
from service.jobs.inputs import sweep_inputs, touch
from service.jobs.params import param_help
from service.jobs.registry import load_builtin_kinds
from service.jobs.servicer import MAX_KIND_CHARS, MAX_PARAMS_JSON_CHARS
from service.validation import check_count, check_text
from service.web import schemas as s
from service.web.context import WebContext

# a report and its pictures come from a job's parameters; served from the console's origin
# they are sandboxed (no script, an origin of their own), and never sniffed into HTML
ARTIFACT_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' "
                                               "data:; style-src 'unsafe-inline'",
                    "X-Content-Type-Options": "nosniff"}


log = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def job_out(j: JobInfo) -> dict:
    d = j.to_dict()
    folder = job_folder(j)
    for a in d["artifacts"]:
        rel = os.path.relpath(a["path"], folder) if folder else a["name"]
        a["url"] = f"/v1/jobs/{j.id}/files/{quote(rel)}"
    return d


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list[{_type_name(args[0]) if args else 'any'}]"
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def kind_out(kind) -> dict:
    hints = typing.get_type_hints(kind.params)
    params = []
    for f in dataclasses.fields(kind.params):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING
                                         else f.default_factory())
        params.append({"name": f.name, "type": _type_name(hints[f.name]), "required": required,
                       "default": list(default) if isinstance(default, tuple) else default,
                       "help": param_help(f)})
    return {"name": kind.name, "help": kind.help, "params": params}


class InputsSweep:
    """The age-based sweep of uploaded job inputs, run by the upload route (uploads are what
    fills the folder) at most once a ``interval_seconds``."""

    def __init__(self, root: Path, max_age_seconds: float, interval_seconds: float = 60.0) -> None:
        self.root, self.max_age, self.interval = root, max_age_seconds, interval_seconds
        self._last = float("-inf")
        self._lock = threading.Lock()

    def maybe(self, sessions) -> int:
        now = time.monotonic()
        if now - self._last < self.interval or not self._lock.acquire(blocking=False):
            return 0
        try:
            self._last = now
            return sweep_inputs(sessions, self.root, max_age_seconds=self.max_age)
        except Exception:  # the upload succeeded; the sweep tries again next time
            log.warning("the sweep of job inputs failed", exc_info=True)
            return 0
        finally:
            self._lock.release()


def router(ctx: WebContext) -> APIRouter:
    r = APIRouter(prefix="/v1/jobs", tags=["jobs"])
    sweep = InputsSweep(ctx.inputs_dir, ctx.inputs_max_age_seconds)

    @r.get("/kinds", response_model=s.JobKindsOut, summary="Job kinds and their parameters")
    def kinds(request: Request) -> dict:
        ctx.require_jobs(request, "read")
        return {"kinds": [kind_out(k) for _, k in sorted(load_builtin_kinds().items())]}

    @r.post("", response_model=s.JobOut, summary="Queue a job")
    def submit(request: Request, body: s.SubmitJobIn) -> dict:
        jobs = ctx.require_jobs(request, "write")
        check_text(body.kind, "job kind", max_chars=MAX_KIND_CHARS)
        check_count(len(str(body.params)), MAX_PARAMS_JSON_CHARS, "characters of params")
        return job_out(jobs.submit(body.kind, body.params))

    @r.get("", response_model=s.JobsOut, summary="Recent jobs, newest first")
    def list_jobs(request: Request, state: str = "", kind: str = "", limit: int = 50) -> dict:
        jobs = ctx.require_jobs(request, "read")
        check_text(kind, "job kind", max_chars=MAX_KIND_CHARS, allow_empty=True)
        return {"jobs": [job_out(j) for j in jobs.list(state=state or None, kind=kind,
                                                       limit=limit)]}

    @r.get("/{job_id}", response_model=s.JobOut, summary="One job")
    def get(request: Request, job_id: int) -> dict:
        return job_out(ctx.require_jobs(request, "read").get(job_id))

    @r.post("/{job_id}/cancel", response_model=s.JobOut, summary="Cancel a job")
    def cancel(request: Request, job_id: int) -> dict:
        return job_out(ctx.require_jobs(request, "write").cancel(job_id))

    @r.get("/{job_id}/files/{name:path}", summary="A job's artifact, or a file its report links")
    def artifact(request: Request, job_id: int, name: str) -> FileResponse:
        job = ctx.require_jobs(request, "read").get(job_id)
        path, media = artifact_file(job, name)
        return FileResponse(path, media_type=media, headers=ARTIFACT_HEADERS)

    @r.post("/inputs", response_model=s.JobInputOut,
            summary="Store an image on the server for a job's parameters (e.g. verify's a, b)")
    def job_input(request: Request, image: Annotated[UploadFile, File()]) -> dict:
        jobs = ctx.require_jobs(request, "write")
        core = ctx.require_core()
        data = image.file.read()
        if not data:
            raise InvalidInput("empty image")
        img = core.pipeline.decode(data)  # the service's limits: format, pixels
        ext = {"JPEG": "jpg"}.get(img.format or "", (img.format or "img").lower())
        sha = hashlib.sha256(data).hexdigest()
        # by content (the same image is stored once), under its own name: a job's pictures
        # are titled with their inputs' file names
        folder = ctx.inputs_dir / sha[:16]
        folder.mkdir(parents=True, exist_ok=True)
        stem = SAFE_NAME.sub("_", Path(image.filename or "").stem)[:64].strip("._") or "image"
        path = folder / f"{stem}.{ext}"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".input-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        touch(folder)  # uploaded now: the sweep's age starts again
        sweep.maybe(jobs.sessions)
        return {"path": str(path.resolve()), "sha256": sha, "bytes": len(data)}

    return r
