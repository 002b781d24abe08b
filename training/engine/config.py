"""TrainConfig from a TOML file merged under command-line flags (parsing stays at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.engine.train import TrainConfig
from training.settings import read_toml


def read_toml_config(path: str | Path) -> dict[str, Any]:
    """TrainConfig fields from a TOML file: top-level keys, or a ``[train]`` table.
    Dashes in keys are accepted for underscores."""
    return read_toml(path, table="train", valid=TrainConfig.field_names())


def merge_config(file_values: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """Flags given on the command line win over the file; the dataclass defaults fill the rest."""
    merged = {**file_values, **flags}
    missing = [k for k in ("data", "out") if not merged.get(k)]
    if missing:
        raise ValueError(f"missing {' and '.join('--' + k for k in missing)} (on the command "
                         "line or in the --config file)")
    return TrainConfig(**merged)
