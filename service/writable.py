"""Folders the demo and the server write must be writable: a clear error (folder and fix) first.

A bind-mounted ``var/`` owned by root is not writable by the Docker image's user (uid 10001);
without this check the first write deep inside training, SQLite or a publish failed with a bare
``Permission denied`` or a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_UID = 10001  # the Dockerfile's user


def not_writable_message(folder: Path, *, what: str) -> str:
    """Why ``folder`` cannot be used and how to fix it (a root-owned bind mount, usually)."""
    try:
        owner = f", owned by uid {folder.stat().st_uid}"
    except OSError:
        owner = ""
    uid = os.getuid() if hasattr(os, "getuid") else "?"
    return (f"{folder} is not writable by this user (uid {uid}){owner}; {what}. Make it "
            f"writable for uid {uid} (for a bind-mounted var/ of the Docker image, whose user "
            f"is uid {IMAGE_UID}: `sudo chown -R {IMAGE_UID} var` on the host), run as its "
            f"owner (`docker run --user $(id -u) ...`), or choose another folder")


def require_writable(path: str | Path, *, what: str) -> None:
    """Raise PermissionError (a clear message, see :func:`not_writable_message`) unless
    ``path``, or where it does not exist yet its nearest existing parent, can be written."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(not_writable_message(folder, what=what))


def sqlite_folder(catalog_url: str) -> Path | None:
    """The folder of a file-backed SQLite catalogue (SQLite writes its journal beside the
    file); None for other databases and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    url = make_url(catalog_url)
    if not url.drivername.startswith("sqlite") or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).parent


def require_serving_writable(cfg) -> None:
    """The server's index roots (new versions are published there), its blob folder and a
    SQLite catalogue's folder must be writable (``cfg``: a ``service.config.ServeConfig``)."""
    for root in (cfg.index_root, *cfg.extra_index_roots):
        require_writable(root, what="the server publishes index versions there")
    if cfg.blob_dir:
        require_writable(cfg.blob_dir, what="the server stores uploaded images there")
    folder = sqlite_folder(cfg.catalog_url)
    if folder is not None:
        require_writable(folder, what=f"the SQLite catalogue {cfg.catalog_url} is written there")
