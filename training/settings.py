"""One settings root: every setting from flags > IMGSIM_* environment > TOML file > defaults.

The lowest package holds it (stdlib only, no torch) so that training, the indexer, the
service and the light commands (`imgsim health`, `imgsim config show`) read settings with one
TOML loader and one precedence. Each process builds one typed object from it (``TrainConfig``,
``ServeConfig``, :class:`ClientSettings`, :class:`CommonSettings`); :func:`resolve` records
where each value came from, which `imgsim config show` prints.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "IMGSIM_"
DEFAULT_DATA_ROOT = "../shared/data"
DEFAULT_SERVER = "localhost:50051"
DEFAULT_CATALOG = "sqlite:///var/catalog.db"
DEFAULT_INDEX_ROOT = "var/index"
DEFAULT_JOBS_ROOT = "var/jobs"
DEFAULT = "default"
FLAG = "flag"


# The tables of a settings file; one file may hold several (`imgsim config show` prints them).
SECTIONS = ("common", "client", "serve", "train")


def read_toml(path: str | Path, *, table: str, valid: Iterable[str],
              top_level: bool = True) -> dict[str, Any]:
    """The one TOML loader: the settings of ``[table]``, or (``top_level``, when the file has
    no such table) its top-level keys, other sections' tables aside; dashes in keys are read
    as underscores; an unknown key is a ValueError that lists the valid ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    if isinstance(data.get(table), dict):
        data = data[table]
    elif top_level:
        data = {k: v for k, v in data.items() if not (k in SECTIONS and isinstance(v, dict))}
    else:
        data = {}
    values = {k.replace("-", "_"): v for k, v in data.items()}
    valid = sorted(valid)
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; valid: {', '.join(valid)}")
    return values


def coerce(name: str, tp: Any, value: Any, *, what: str = "config") -> Any:
    """A file or environment value -> the field's type (environment values are strings;
    a tuple is given as a list or a comma-separated string)."""
    if isinstance(tp, str):
        tp = {"int": int, "float": float, "str": str, "bool": bool}.get(tp, str)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        return tuple(str(v) for v in value)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be {getattr(tp, '__name__', tp)}, "
                         f"got {value!r}") from None


def resolve(cls: type, *, file: str | Path | None = None, table: str, top_level: bool = True,
            env: Mapping[str, str] | None = None,
            env_names: Callable[[str], Iterable[str]],
            flags: Mapping[str, Any] | None = None,
            defaults: Mapping[str, Any] | None = None,
            what: str = "config") -> tuple[dict[str, Any], dict[str, str]]:
    """The values of dataclass ``cls``'s fields and where each came from (``default``,
    ``file PATH``, ``env NAME``, ``flag``), by the one precedence: ``flags`` (None: not
    given) > environment (``env_names(field)``, the first one set wins) > ``file`` > the
    ``defaults`` given > the dataclass's own defaults (those are not in the result)."""
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    values: dict[str, Any] = dict(defaults or {})
    sources = {k: DEFAULT for k in values}
    if file:
        for k, v in read_toml(file, table=table, valid=known, top_level=top_level).items():
            values[k], sources[k] = coerce(k, hints[k], v, what=what), f"file {file}"
    env = os.environ if env is None else env
    for name in known:
        for var in env_names(name):
            raw = env.get(var)
            if raw is not None:
                values[name], sources[name] = coerce(name, hints[name], raw, what=what), f"env {var}"
                break
    for k, v in (flags or {}).items():
        if v is not None:
            values[k], sources[k] = coerce(k, hints[k], v, what=what), FLAG
    return values, sources


def build(cls: type, values: Mapping[str, Any], sources: Mapping[str, str]) -> Any:
    """``cls(**values)``, and the source of every field (``default`` for the rest)."""
    obj = cls(**values)
    return obj, {f.name: sources.get(f.name, DEFAULT) for f in fields(cls)}


def prefixed(prefix: str) -> Callable[[str], list[str]]:
    """The environment variable of a setting: ``IMGSIM_<PREFIX><NAME>``."""
    return lambda name: [f"{ENV_PREFIX}{prefix}{name.upper()}"]


@dataclass(frozen=True)
class CommonSettings:
    """Settings every process shares (environment ``IMGSIM_<NAME>``, table ``[common]``)."""

    data_root: str = DEFAULT_DATA_ROOT  # shared datasets (LFW, CUB, ISBI 2012): IMGSIM_DATA
    jobs_root: str = DEFAULT_JOBS_ROOT  # job artifacts: IMGSIM_JOBS_ROOT
    catalog_url: str = DEFAULT_CATALOG  # the database: IMGSIM_CATALOG_URL
    index_root: str = DEFAULT_INDEX_ROOT  # index versions: IMGSIM_INDEX_ROOT


# The documented names of the common settings (IMGSIM_DATA, not IMGSIM_DATA_ROOT).
_COMMON_ENV = {"data_root": "IMGSIM_DATA", "jobs_root": "IMGSIM_JOBS_ROOT",
               "catalog_url": "IMGSIM_CATALOG_URL", "index_root": "IMGSIM_INDEX_ROOT"}


def common_settings(file: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                    **flags: Any) -> tuple[CommonSettings, dict[str, str]]:
    values, sources = resolve(CommonSettings, file=file, table="common", top_level=False, env=env,
                              env_names=lambda n: [_COMMON_ENV[n]], flags=flags)
    return build(CommonSettings, values, sources)


def data_root(env: Mapping[str, str] | None = None) -> Path:
    """Where shared datasets live: $IMGSIM_DATA, else ../shared/data (read when asked)."""
    return Path(common_settings(env=env)[0].data_root)


@dataclass(frozen=True)
class ClientSettings:
    """How the client commands reach a server (environment ``IMGSIM_<NAME>``)."""

    server: str = DEFAULT_SERVER  # HOST:PORT: IMGSIM_SERVER
    api_key: str = ""  # IMGSIM_API_KEY
    tls_ca: str = ""  # PEM roots of a TLS server: IMGSIM_TLS_CA
    tls_name: str = ""  # certificate host name when not the address: IMGSIM_TLS_NAME


def client_settings(file: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                    **flags: Any) -> tuple[ClientSettings, dict[str, str]]:
    values, sources = resolve(ClientSettings, file=file, table="client", top_level=False, env=env,
                              env_names=prefixed(""), flags=flags)
    return build(ClientSettings, values, sources)


def defaults_of(cls: type) -> dict[str, Any]:
    """A dataclass's field defaults (fields without one are left out)."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
