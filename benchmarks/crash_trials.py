"""Crash trials: kill -9 of the server during streamed Upserts, and of `imgsim reindex`.

Upsert trials: a real server (benchmarks/reliability_common.py) takes a client's loop of
Upsert streams (3 new keys and 1 replaced image each) and Deletes (every third call, keys of
an earlier stream), and is SIGKILLed at a random moment; then restarted. Reindex trials: an
`imgsim reindex` is SIGKILLed at a random moment of its run, then run again to completion.
Both are also killed exactly between the index publish and the catalogue commit
(``IMGSIM_FAULT_INJECT=after-index-publish``), which random kills rarely hit.

After each restart it checks, from the catalogue and the CURRENT index on disk:
- catalogue and index hold the same ids, and the served count equals the catalogue's rows;
- every vector is its catalogued image's embedding (an update is not half-applied);
- each acknowledged call is applied; each interrupted one is applied whole or not at all;
- the reindex rerun resumes (finished chunks are not embedded again), completes and is
  recorded in the catalogue.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/crash_trials.py --upsert-trials 20 --reindex-trials 10
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_common import (  # noqa: E402
    CHILD_ENV,
    ServerProcess,
    Workspace,
    fresh_copy,
    prepare,
)

from indexer.catalog import ImageRow, index_versions, open_catalog  # noqa: E402
from indexer.faults import AFTER_INDEX_PUBLISH, FAULT_ENV  # noqa: E402
from indexer.rebuild import stored_vectors  # noqa: E402
from indexer.versions import current_version_name, load_index_version  # noqa: E402
from service.client import SimilarityClient, UpsertImage  # noqa: E402
from training.models.embedder import Embedder  # noqa: E402


@dataclass
class Call:
    kind: str  # "upsert" | "delete"
    items: dict[str, str]  # key -> sha256 of the image sent (delete: key -> "")
    state: str = "sent"  # sent (in flight at the kill) | ok | failed


@dataclass
class Check:
    ids_agree: bool = True
    count_agrees: bool = True
    vectors_agree: bool = True
    lost: int = 0  # acknowledged changes missing after the restart
    half_applied: int = 0  # interrupted calls applied in part
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.ids_agree and self.count_agrees and self.vectors_agree and not self.lost
                and not self.half_applied)


def catalogue(ws: Workspace) -> dict[str, tuple[int, str, str]]:
    """{key: (id, sha256, path)} of the default collection."""
    with open_catalog(ws.catalog_url)() as s:
        return {r.key: (r.id, r.sha256, _file(ws, r.path)) for r in s.scalars(
            select(ImageRow).where(ImageRow.collection == "default"))}


def _file(ws: Workspace, path: str) -> str:
    """An uploaded blob's path is relative to the index root (or, in older catalogues, to
    the server's directory, which here is the workspace)."""
    p = Path(path)
    if p.is_absolute():
        return path
    return str(next((b / p for b in (ws.index_root, ws.root) if (b / p).is_file()), p))


def check_state(ws: Workspace, emb: Embedder, *, served_count: int | None,
                calls: list[Call] = ()) -> Check:
    c = Check()
    cat = catalogue(ws)
    vectors, ids = stored_vectors(load_index_version(ws.index_root).index)
    by_id = {v[0]: (k, v[2]) for k, v in cat.items()}
    c.ids_agree = set(ids.tolist()) == set(by_id)
    if not c.ids_agree:
        c.notes.append(f"index-only ids {sorted(set(ids.tolist()) - set(by_id))[:5]}, "
                       f"catalogue-only ids {sorted(set(by_id) - set(ids.tolist()))[:5]}")
    c.count_agrees = served_count is None or served_count == len(cat)
    common = [n for n, i in enumerate(ids.tolist()) if i in by_id]
    paths = [by_id[int(ids[n])][1] for n in common]
    want = emb.embed_paths(paths) if paths else np.zeros((0, emb.dim), np.float32)
    # the service decodes uploads on its own path: the same pixels, float32 rounding apart
    bad = np.abs(vectors[common] - want).max(1) > 1e-3 if paths else np.zeros(0, bool)
    c.vectors_agree = not bad.any()
    if bad.any():
        c.notes.append(f"{int(bad.sum())} vectors differ from their catalogued image")
    last = {k: n for n, call in enumerate(calls) for k in call.items}  # later calls win
    for n, call in enumerate(calls):
        if call.kind == "upsert":
            applied = [cat.get(k, (0, ""))[1] == sha for k, sha in call.items.items()
                       if last[k] == n]
        else:
            applied = [k not in cat for k in call.items]
        if call.state == "ok" and not all(applied):
            c.lost += sum(not a for a in applied)
        if call.state != "ok" and any(applied) and not all(applied):
            c.half_applied += 1
    return c


def served_count(target: str) -> int:
    with SimilarityClient(target, timeout=10) as cl:
        return int(cl.describe().count)


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def client_loop(target: str, trial: int, pool: list[Path], replace_keys: list[str],
                calls: list[Call], stop: threading.Event, rng: random.Random) -> None:
    """Upsert streams and Deletes until the server dies (or ``stop``)."""
    acked: list[list[str]] = []
    with SimilarityClient(target, timeout=30) as cl:
        s = 0
        while not stop.is_set():
            if s % 3 == 2 and acked:
                keys = acked.pop(0)
                call = Call("delete", dict.fromkeys(keys, ""))
                calls.append(call)
                try:
                    cl.delete(keys)
                    call.state = "ok"
                except Exception:
                    call.state = "failed"
                    return
            else:
                imgs = rng.sample(pool, 4)
                keys = [f"t{trial}-s{s}-{j}" for j in range(3)] + [rng.choice(replace_keys)]
                call = Call("upsert", {k: _sha(p) for k, p in zip(keys, imgs, strict=True)})
                calls.append(call)
                try:
                    cl.upsert([UpsertImage(k, p, label=p.parent.name)
                               for k, p in zip(keys, imgs, strict=True)])
                    call.state = "ok"
                    acked.append(keys[:3])
                except Exception:
                    call.state = "failed"
                    return
            s += 1


def upsert_trials(ws: Workspace, out: Path, emb: Embedder, n: int, faults: int,
                  rng: random.Random) -> list[dict]:
    pool = sorted(ws.queries.rglob("*.png")) + sorted(ws.images.rglob("*.png"))
    replace_keys = sorted(catalogue(ws))[:40]
    log = out / "upsert-server.log"
    server = ServerProcess(ws, log).start()
    rows = []
    try:
        for t in range(n + faults):
            injected = t >= n
            if injected:  # the next change dies between publish and commit
                server.stop()
                server = ServerProcess(ws, log, env={FAULT_ENV: AFTER_INDEX_PUBLISH}).start()
            calls: list[Call] = []
            stop = threading.Event()
            th = threading.Thread(target=client_loop, daemon=True,
                                  args=(server.target, t, pool, replace_keys, calls, stop, rng))
            delay = rng.uniform(0.2, 4.0)
            t0 = time.monotonic()
            th.start()
            if injected:
                th.join(60)  # the server kills itself inside the first change
                rc = server.proc.wait(30)
            else:
                time.sleep(delay)
                rc = server.kill()
            stop.set()
            th.join(30)
            killed_at = time.monotonic() - t0
            server = ServerProcess(ws, log).start()
            chk = check_state(ws, emb, served_count=served_count(server.target), calls=calls)
            rows.append({"trial": t + 1, "mode": "injected" if injected else "random",
                         "killed_at_s": round(killed_at, 2), "exit_code": rc,
                         "acknowledged": sum(c.state == "ok" for c in calls),
                         "interrupted": sum(c.state != "ok" for c in calls),
                         "catalogue_rows": len(catalogue(ws)), **chk.__dict__, "ok": chk.ok})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    return rows


def reindex_cmd(ws: Workspace, *, chunk_size: int) -> list[str]:
    return [sys.executable, "-m", "imgsim.cli", "reindex", "--checkpoint", str(ws.checkpoint),
            "--collection", "default", "--catalog", ws.catalog_url, "--index-root",
            str(ws.index_root), "--chunk-size", str(chunk_size), "--num-workers", "0",
            "--tuning-queries", "50"]


def _planned(ws: Workspace, p: subprocess.Popen, timeout: float = 300.0) -> float:
    """Wait until the reindex has written its plan (imports and the catalogue snapshot
    done: what follows is embedding, building and publishing); returns the wait."""
    t0 = time.monotonic()
    while not list((ws.index_root / "reindex").glob("*/run.json")):
        if p.poll() is not None or time.monotonic() - t0 > timeout:
            break
        time.sleep(0.02)
    return time.monotonic() - t0


def reindex_trials(ws: Workspace, out: Path, emb: Embedder, n: int, faults: int,
                   rng: random.Random, *, chunk_size: int) -> list[dict]:
    log = open(out / "reindex.log", "a")
    # calibration: one uninterrupted run; kills land uniformly in its work after the plan
    p = subprocess.Popen(reindex_cmd(ws, chunk_size=chunk_size), env=CHILD_ENV, stdout=log,
                         stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    to_plan = _planned(ws, p)
    if p.wait(600):
        raise RuntimeError(f"reindex failed; see {out / 'reindex.log'}")
    full = time.monotonic() - t0 - to_plan
    print(f"uninterrupted reindex: {to_plan:.1f}s to the plan, then {full:.1f}s", flush=True)
    rows = []
    for t in range(n + faults):
        injected = t >= n
        env = {**CHILD_ENV, **({FAULT_ENV: AFTER_INDEX_PUBLISH} if injected else {})}
        before = current_version_name(ws.index_root)
        p = subprocess.Popen(reindex_cmd(ws, chunk_size=chunk_size), env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        delay = rng.uniform(0.0, 1.0) * full
        if injected:
            rc = p.wait(600)
        else:
            _planned(ws, p)
            try:
                rc = p.wait(delay)  # finished before the kill: counted as not killed
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait(30)
        after_kill = check_state(ws, emb, served_count=None)
        published_by_killed = current_version_name(ws.index_root) != before
        r = subprocess.run(reindex_cmd(ws, chunk_size=chunk_size), env=CHILD_ENV,
                           capture_output=True, text=True, timeout=600)
        log.write(r.stdout + r.stderr)
        resumed = re.search(r"resuming: (\d+) of (\d+) images already embedded", r.stderr)
        chk = check_state(ws, emb, served_count=None)
        name = current_version_name(ws.index_root)
        with open_catalog(ws.catalog_url)() as s:
            recorded = name in {v.name for v in index_versions(s, collection="default")}
        n_rows = len(catalogue(ws))
        count = load_index_version(ws.index_root).index.ntotal
        rows.append({"trial": t + 1, "mode": "injected" if injected else "random",
                     "killed_after_plan_s": None if injected else round(delay, 2),
                     "exit_code": rc,
                     "agree_after_kill": after_kill.ok,
                     "published_before_kill": published_by_killed,
                     "resumed_images": int(resumed.group(1)) if resumed else 0,
                     "rerun_rc": r.returncode, "recorded": recorded,
                     "count": int(count), "catalogue_rows": n_rows,
                     **chk.__dict__, "ok": chk.ok and r.returncode == 0 and recorded
                     and after_kill.ok and count == n_rows})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def tables(res: dict) -> str:
    def where(mode: str) -> str:
        return "random moment" if mode == "random" else "after-index-publish (injected)"

    out = ["| server killed during Upsert/Delete at | trials | calls acknowledged | calls "
           "interrupted | acknowledged records lost | interrupted calls half-applied | trials "
           "with catalogue/index disagreeing | trials all OK |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in ("random", "injected"):
        rs = [r for r in res["upsert"] if r["mode"] == mode]
        if rs:
            out.append(
                f"| {where(mode)} | {len(rs)} | {sum(r['acknowledged'] for r in rs)} | "
                f"{sum(r['interrupted'] for r in rs)} | {sum(r['lost'] for r in rs)} | "
                f"{sum(r['half_applied'] for r in rs)} | "
                f"{sum(not (r['ids_agree'] and r['count_agrees'] and r['vectors_agree']) for r in rs)}"
                f" | {sum(r['ok'] for r in rs)}/{len(rs)} |")
    out += ["", "| reindex killed at | trials | killed before finishing | published before the "
            "kill | reruns resuming from chunks (images reused) | trials with catalogue/index "
            "disagreeing (after kill or rerun) | reruns completed and recorded | trials all OK |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in ("random", "injected"):
        rs = [r for r in res["reindex"] if r["mode"] == mode]
        if rs:
            bad = sum(not (r["agree_after_kill"] and r["ids_agree"] and r["vectors_agree"]
                           and r["count"] == r["catalogue_rows"]) for r in rs)
            out.append(
                f"| {where(mode)} | {len(rs)} | {sum(r['exit_code'] == -9 for r in rs)} | "
                f"{sum(r['published_before_kill'] for r in rs)} | "
                f"{sum(r['resumed_images'] > 0 for r in rs)} "
                f"({sum(r['resumed_images'] for r in rs)}) | {bad} | "
                f"{sum(r['rerun_rc'] == 0 and r['recorded'] for r in rs)} | "
                f"{sum(r['ok'] for r in rs)}/{len(rs)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/crash")
    p.add_argument("--upsert-trials", type=int, default=20)
    p.add_argument("--reindex-trials", type=int, default=10)
    p.add_argument("--injected", type=int, default=3, help="fault-injected trials of each kind")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--reindex-images", type=int, default=1750,
                   help="digits catalogued for the reindex trials (embedding must take long "
                        "enough for kills to land between chunks)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    rng = random.Random(args.seed)
    golden = prepare(out / "ws", per_class=20)
    emb = Embedder.from_checkpoint(golden.checkpoint)
    res = {"config": vars(args)}
    t0 = time.monotonic()
    res["upsert"] = upsert_trials(fresh_copy(golden, out / "upsert"), out, emb,
                                  args.upsert_trials, args.injected, rng) \
        if args.upsert_trials else []
    if args.reindex_trials:
        big = prepare(out / "ws-reindex", per_class=args.reindex_images // 10)
        res["reindex"] = reindex_trials(fresh_copy(big, out / "reindex"), out,
                                        Embedder.from_checkpoint(big.checkpoint),
                                        args.reindex_trials, args.injected, rng,
                                        chunk_size=args.chunk_size)
    else:
        res["reindex"] = []
    res["wall_seconds"] = time.monotonic() - t0
    (out / "crash.json").write_text(json.dumps(res, indent=2))
    print(tables(res))
    print(f"wall {res['wall_seconds']:.0f}s")
    return 0 if all(r["ok"] for r in res["upsert"] + res["reindex"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
