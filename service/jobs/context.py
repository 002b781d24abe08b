"""What a running job sees: its output folder, progress reporting (which is where cancellation
is noticed), the artifacts it produced, its HTML report, and the worker's defaults."""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.jobs.report import HtmlReport, job_title

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job when its cancellation was requested."""


@dataclass(frozen=True)
class JobDefaults:
    """Worker-wide defaults that jobs fall back on when their params leave them empty."""

    checkpoint: str | None = None
    index_root: str | None = None
    catalog_url: str | None = None
    data_root: str | None = None
    # the index roots of the other collections served beside index_root's (a job's
    # 'collection' parameter picks one by its manifest)
    index_roots: tuple[str, ...] = ()


# (progress in [0, 1], message, artifacts) -> cancel requested?
ProgressSink = Callable[[float, str, list[dict[str, str]]], bool]


class JobContext:
    """Passed to a job kind's run function. ``progress`` raises JobCancelled once a cancel has
    been requested, so a job is cancellable wherever it reports progress."""

    def __init__(self, job_id: int | None, kind: str, out_dir: str | Path, *,
                 defaults: JobDefaults | None = None, sink: ProgressSink | None = None,
                 min_interval: float = 0.5) -> None:
        self.job_id = job_id
        self.kind = kind
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.defaults = defaults or JobDefaults()
        self.artifacts: list[dict[str, str]] = []
        self.report = HtmlReport(job_title(job_id, kind))
        self._sink = sink
        self._min_interval = min_interval
        self._last = 0.0
        self.last_progress = 0.0
        self.last_message = ""

    def progress(self, fraction: float, message: str = "", *, force: bool = False) -> None:
        """Report progress (throttled); raises JobCancelled when the job should stop."""
        self.last_progress, self.last_message = fraction, message
        now = time.monotonic()
        if self._sink is None or (not force and now - self._last < self._min_interval):
            return
        self._last = now
        if self._sink(fraction, message, list(self.artifacts)):
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def check_cancelled(self) -> None:
        self.progress(self.last_progress, self.last_message, force=True)

    def path(self, name: str) -> Path:
        """A path for an output file inside this job's folder."""
        return self.out_dir / name

    def add_artifact(self, path: str | Path, caption: str = "", *, in_report: bool = True) -> Path:
        """Record a produced file; images also go into the HTML report with their caption."""
        path = Path(path).resolve()
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.artifacts.append({"name": path.name, "path": str(path), "media_type": media,
                               "caption": caption})
        if in_report and media.startswith("image/"):
            self.report.image(path, caption or path.name, base=self.out_dir)
        return path

    def write_report(self) -> Path:
        path = self.report.write(self.out_dir / "report.html")
        return self.add_artifact(path, "HTML report of this job", in_report=False)
