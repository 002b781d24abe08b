"""Shared by the reliability benchmarks (bad_input, crash_trials, soak): a tiny served index of
real digit images, and `imgsim serve` started in a subprocess on 127.0.0.1.

The model is trained for seconds (a smallcnn, 32 px, like the tests' fixture): these benchmarks
measure failure behaviour, not accuracy. Everything is cached under the benchmark's --out.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD_ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}


@dataclass(frozen=True)
class Workspace:
    root: Path
    checkpoint: Path
    images: Path  # <images>/<digit>/NNNN.png, catalogued
    queries: Path  # images not catalogued

    @property
    def index_root(self) -> Path:
        return self.root / "idx"

    @property
    def catalog_url(self) -> str:
        return f"sqlite:///{self.root / 'cat.db'}"


def prepare(out: Path, *, per_class: int = 20) -> Workspace:
    """Digits (``per_class`` catalogued, 5 held out per class), a tiny model, an index."""
    from indexer.build import BuildConfig, build_index
    from service.demo import export_digits
    from training.engine.train import TrainConfig, train

    out = out.resolve()  # the server runs in another directory
    out.mkdir(parents=True, exist_ok=True)
    images, queries = out / "images", out / "queries"
    if not images.is_dir():
        export_digits(out / "all", size=32)
        for cls in sorted((out / "all").iterdir()):
            files = sorted(cls.iterdir())
            for dest, part in ((images, files[:per_class]),
                               (queries, files[per_class:per_class + 5])):
                (dest / cls.name).mkdir(parents=True, exist_ok=True)
                for f in part:
                    shutil.copy(f, dest / cls.name / f.name)
        shutil.rmtree(out / "all")
    ckpt = out / "model" / "model.pt"
    if not ckpt.is_file():
        ckpt = Path(train(TrainConfig(data=str(images), out=str(out / "model"), arch="smallcnn",
                                      input_size=32, embedding_dim=32, loss="contrastive",
                                      margin=0.5, p=8, k=4, epochs=1, steps_per_epoch=10,
                                      num_workers=0, name="tiny")))
    ws = Workspace(out / "golden", ckpt, images, queries)
    if not (ws.index_root / "CURRENT").is_file():
        ws.root.mkdir(exist_ok=True)
        build_index(BuildConfig(checkpoint=str(ckpt), images=str(images),
                                index_root=str(ws.index_root), catalog_url=ws.catalog_url,
                                num_workers=0, progress=False))
    return ws


def fresh_copy(ws: Workspace, dest: Path) -> Workspace:
    """A private copy of the golden index and catalogue (paths inside stay absolute)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(ws.root, dest)
    return Workspace(dest, ws.checkpoint, ws.images, ws.queries)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident set size of a running process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    """`imgsim serve` on 127.0.0.1 in a subprocess; ``start`` waits (bounded) for SERVING."""

    def __init__(self, ws: Workspace, log: Path, *, port: int | None = None,
                 env: dict[str, str] | None = None, **settings) -> None:
        self.ws, self.log, self.port = ws, log.resolve(), port or free_port()
        self.env = {**CHILD_ENV, **(env or {})}
        # no HTTP console: `imgsim serve` would take port 8080, which two servers cannot share
        self.settings = {"torch_threads": 1, "decode_workers": 1, "watch_seconds": 1.0,
                         "http_port": 0, **settings}
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> ServerProcess:
        from service.client import SimilarityClient

        cfg = self.log.with_suffix(".toml")
        extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in self.settings.items())
        cfg.write_text(f'[serve]\ncheckpoint = "{self.ws.checkpoint}"\n'
                       f'index_root = "{self.ws.index_root}"\ncatalog_url = "{self.ws.catalog_url}"\n'
                       f'host = "127.0.0.1"\nport = {self.port}\n{extra}')
        self.proc = subprocess.Popen([sys.executable, "-m", "imgsim.cli", "serve", "--config",
                                      str(cfg)], cwd=self.ws.root, env=self.env,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        give_up = time.monotonic() + timeout
        with SimilarityClient(self.target, timeout=2) as c:
            while time.monotonic() < give_up:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log}")
                try:
                    if c.health() == "SERVING":
                        return self
                except Exception:
                    pass
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not SERVING after {timeout:.0f}s; see {self.log}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid) if self.alive() else float("nan")

    def kill(self) -> int:
        """SIGKILL (no cleanup), then reap; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            return self.kill()
