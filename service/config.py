"""ServeConfig: every server setting in one frozen object, from defaults < TOML file < env < flags
(training.settings' one loader and precedence; light: no torch, so that the commands beside a
server read it fast)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.limits import DEFAULT_FORMATS
from training import settings
from training.data.limits import MAX_PIXELS

if TYPE_CHECKING:
    from service.domain import CoreOptions

ENV_PREFIX = "IMGSIM_SERVE_"
DEFAULT_HTTP_PORT = 8080


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str
    index_root: str
    catalog_url: str
    host: str = "127.0.0.1"
    port: int = 50051
    extra_index_roots: tuple[str, ...] = ()  # more collections, one index root each
    # where vectors are searched: faiss (index versions under index_root, in this process) or
    # milvus:FILE (Milvus Lite) / milvus:http://host:19530 (shared by stateless replicas)
    vector_store: str = "faiss"
    # with a store other than faiss: the catalogue collections to serve (first: the default);
    # empty: every catalogue collection the store has published
    collections: tuple[str, ...] = ()
    # gRPC
    max_workers: int = 64  # handler threads: requests waiting on a batch hold one each
    max_concurrent_rpcs: int = 512  # beyond this, RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024
    grace_seconds: float = 10.0  # SIGTERM: in-flight calls get this long to finish
    # dynamic batching
    max_batch: int = 32
    max_wait_ms: float = 2.0
    search_max_batch: int = 64
    search_max_wait_ms: float = 0.0
    decode_workers: int = 2
    max_queue: int = 1024
    torch_threads: int = 0  # 0: torch's default
    faiss_threads: int = 1
    # limits and pipeline
    max_pixels: int = MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    face: str = "off"
    max_k: int = 1000
    max_items: int = 64
    max_upsert_items: int = 1000
    max_upsert_bytes: int = 256 * 1024 * 1024
    # index versions
    watch_seconds: float = 2.0  # poll CURRENT this often (0: only the Reload call swaps)
    keep_versions: int = 5
    blob_dir: str = ""
    catalog_cache_seconds: float = 5.0  # search hits' catalogue rows; changes by others show after
    # security
    require_api_key: bool = False
    auth_cache_seconds: float = 5.0
    tls_cert: str = ""  # PEM files; both set -> TLS only
    tls_key: str = ""
    # operations
    metrics_port: int = -1  # Prometheus /metrics on this port (-1: off, 0: any free port)
    metrics_host: str = "127.0.0.1"
    # the HTTP/JSON API and web console on ``host`` (service/web): 0 off, -1 any free port.
    # `imgsim serve` and the demo default to DEFAULT_HTTP_PORT; a ServeConfig built in code
    # (tests, embedding) serves no HTTP unless asked
    http_port: int = 0
    log_format: str = "text"  # text | json
    job_threads: int = 1  # JobService worker threads in the server (0: none, leave jobs to workers)

    def __post_init__(self) -> None:
        # gRPC takes a port modulo 65536 (99999 would serve on 34463): refuse it instead
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (0: any free port), got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be -1 (off) or 0..65535, got {self.metrics_port}")
        if not -1 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be 0 (off), -1 (any free port) or 1..65535, got "
                             f"{self.http_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both tls_cert and tls_key")
        from indexer.stores import parse_store_spec  # light: no faiss, no pymilvus

        name, arg = parse_store_spec(self.vector_store)  # ValueError listing the valid names
        if name != "faiss" and not arg:
            raise ValueError(f"vector_store {self.vector_store!r} needs a file (Milvus Lite) "
                             "or URI: milvus:var/milvus.db or milvus:http://host:19530")
        if name != "faiss" and self.extra_index_roots:
            raise ValueError("extra_index_roots are FAISS index roots; with vector_store "
                             f"{self.vector_store!r} name the collections to serve instead")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, got {self.log_format!r}")

    def core_options(self) -> CoreOptions:
        from service.domain import CoreOptions

        names = {f.name for f in fields(CoreOptions)}
        return CoreOptions(**{f.name: getattr(self, f.name) for f in fields(self)
                              if f.name in names})


# Settings every process shares (training.settings.CommonSettings) keep their common name too.
_COMMON_ENV = {"catalog_url": "IMGSIM_CATALOG_URL", "index_root": "IMGSIM_INDEX_ROOT",
               "vector_store": "IMGSIM_VECTOR_STORE"}


def serve_env_names(name: str) -> list[str]:
    """``IMGSIM_SERVE_<NAME>`` (documented); the catalogue URL, the index root and the vector
    store, which the index commands read too, also as ``IMGSIM_CATALOG_URL``/
    ``IMGSIM_INDEX_ROOT``/``IMGSIM_VECTOR_STORE`` (the serve name wins)."""
    return [ENV_PREFIX + name.upper(), *([_COMMON_ENV[name]] if name in _COMMON_ENV else [])]


def resolve_serve_config(file: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                         defaults: Mapping[str, Any] | None = None,
                         **overrides: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings' values and where each came from (see :func:`load_serve_config`)."""
    return settings.resolve(ServeConfig, file=file, table="serve", env=env,
                            env_names=serve_env_names, flags=overrides, defaults=defaults,
                            what="serve config")


def load_serve_config(file: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                      defaults: Mapping[str, Any] | None = None,
                      **overrides: Any) -> ServeConfig:
    """Defaults (ServeConfig's, then ``defaults``), then ``file`` (TOML, top level or a
    ``[serve]`` table), then ``IMGSIM_SERVE_*`` environment variables, then ``overrides``
    (flags; None means not given)."""
    values, _ = resolve_serve_config(file, env=env, defaults=defaults, **overrides)
    missing = [n for n in ("checkpoint", "index_root", "catalog_url") if n not in values]
    if missing:
        raise ValueError(f"serve config: missing {', '.join(missing)} (flag, file or "
                         f"{ENV_PREFIX}<NAME>)")
    return ServeConfig(**values)


# How each setting that names a file or database is given, for error messages.
_FLAGS = {"checkpoint": "--checkpoint", "index_root": "--index-root", "catalog_url": "--catalog",
          "collections": "--collection"}


def how_to_set(name: str) -> str:
    """'set it with --catalog, IMGSIM_SERVE_CATALOG_URL or catalog_url in the --config file'."""
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    return f"set it with {flag}, {ENV_PREFIX}{name.upper()} or {name} in the --config file"


def safe_url(url: str) -> str:
    """A database URL with its password hidden, for messages and logs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def require_catalog(url: str, *, how: str | None = None) -> None:
    """ValueError unless the catalogue database at ``url`` exists and answers a connection.

    Never creates one: a SQLite file that is not there would otherwise be created empty
    (SQLite's default) and a command run from the wrong folder would silently act on a new,
    empty catalogue instead of the server's. ``how`` says how to point at the right one
    (default: the server's flag, environment variable and config setting)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from indexer.catalog import make_engine

    how = how or how_to_set("catalog_url")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"catalogue URL {url!r} is not a database URL (e.g. "
                         f"sqlite:///var/catalog.db or postgresql+psycopg://host/db); {how}"
                         ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if path.is_dir():
            raise ValueError(f"catalogue {url}: {path} is a directory, not a database; {how}")
        if not path.is_file():
            where = f" (from {Path.cwd()})" if not path.is_absolute() else ""
            raise ValueError(f"no catalogue at {url}: {path}{where} does not exist; {how} "
                             f"(`imgsim index build` creates one)")
    engine = None
    try:
        engine = make_engine(url)
        with engine.connect():
            pass
    except (SQLAlchemyError, ImportError) as e:  # unreachable server, bad credentials, driver
        reason = getattr(e, "orig", None) or e
        first = str(reason).strip().splitlines()[0] if str(reason).strip() else type(e).__name__
        raise ValueError(f"cannot open catalogue {safe_url(url)}: {first}; {how}") from None
    finally:
        if engine is not None:
            engine.dispose()
