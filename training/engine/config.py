"""TrainConfig from a TOML file merged under command-line flags (parsing stays at the edge)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from training.engine.train import TrainConfig


def read_toml_config(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a TOML file: top-level keys, or a ``[train]`` table.
    Dashes in keys are accepted for underscores."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None
    if isinstance(data.get("train"), dict):
        data = data["train"]
    values = {k.replace("-", "_"): v for k, v in data.items()}
    valid = TrainConfig.field_names()
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}; valid: {', '.join(valid)}")
    return values


def merge_config(file_values: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """Flags given on the command line win over the file; the dataclass defaults fill the rest."""
    merged = {**file_values, **flags}
    missing = [k for k in ("data", "out") if not merged.get(k)]
    if missing:
        raise ValueError(f"missing {' and '.join('--' + k for k in missing)} (on the command "
                         "line or in the --config file)")
    return TrainConfig(**merged)
