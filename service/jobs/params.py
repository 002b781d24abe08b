"""Typed job parameters: a kind's frozen dataclass, its fields' help, JSON checked against it."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if typing.TYPE_CHECKING:
    from service.jobs.context import JobContext


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type               # a frozen dataclass; JSON params are checked against it
    run: Callable[[Any, JobContext], None]
    help: str


def param(default: Any = dataclasses.MISSING, help: str = "", *,
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A job parameter with its one-line description (``imgsim jobs kinds`` prints it):
    ``perplexity: float = param(30.0, "t-SNE perplexity: ...")``."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help})


def param_help(f: dataclasses.Field) -> str:
    """The description given with :func:`param` ("" when none)."""
    return str(f.metadata.get("help", ""))


def _check_value(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(name, a, value)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{name}: bad value {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):  # JSON's 1e999 parses to inf; no parameter means that
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_check_value(f"{name}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    return value  # Any / dict: passed through


def parse_params(kind: JobKind, raw: dict[str, Any]) -> Any:
    """JSON-decoded params -> the kind's dataclass; ValueError names unknown, missing or
    mistyped fields."""
    if not isinstance(raw, dict):
        raise ValueError("job params must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(kind.params)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for job kind {kind.name!r}; "
                         f"valid: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(kind.params)
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _check_value(name, hints[name], raw[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"job kind {kind.name!r} needs parameter {name!r}")
    return kind.params(**values)


def params_to_json(params: Any) -> dict[str, Any]:
    d = dataclasses.asdict(params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
