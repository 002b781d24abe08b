"""One self-contained HTML page per job that gathers its images (with captions), tables and notes."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path


def job_title(job_id: int | None, kind: str) -> str:
    """A report's title: the job's id and kind; a job run in-process (``imgsim jobs run``) has
    no id, and says so rather than leave a blank where the id goes."""
    if job_id is None:
        return f"imgsim {kind} job (run in-process: not queued, no job id)"
    return f"imgsim job {job_id} ({kind})"


@dataclass
class HtmlReport:
    title: str
    sections: list[str] = field(default_factory=list)
    # shown above everything when set: a failed or cancelled job's report says its results are
    # partial, so that it cannot pass for a finished one
    status: str = ""

    def text(self, text: str) -> None:
        self.sections.append(f"<p>{html.escape(text)}</p>")

    def heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def image(self, path: str | Path, caption: str, *, base: str | Path) -> None:
        rel = os.path.relpath(path, base)
        self.sections.append(
            f'<figure><img src="{html.escape(Path(rel).as_posix(), quote=True)}" '
            f'alt="{html.escape(caption, quote=True)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, rows: list[dict], caption: str = "") -> None:
        if not rows:
            return
        cols = list(rows[0])
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                       + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.sections.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def render(self) -> str:
        return ("<!doctype html><html><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>"
                "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
                "img{max-width:100%;border:1px solid #ccc}figure{margin:1.5em 0}"
                "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
                ".status{background:#fdd;border:2px solid #c00;padding:.5em 1em;font-weight:bold}"
                f"</style></head><body><h1>{html.escape(self.title)}</h1>"
                + (f'<p class="status">{html.escape(self.status)}</p>' if self.status else "")
                + "\n".join(self.sections) + "</body></html>")

    def write(self, path: str | Path) -> Path:
        """Write atomically: a reader (or a killed writer) never leaves half a page."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        os.replace(tmp, path)
        return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
