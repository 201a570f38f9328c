"""Run configuration: one validated pydantic model, loaded from YAML, hashed into the lineage.

Validation happens before Ray starts, so a typo in a threshold stops the run with a message
that names the key and what it accepts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routing.policy import RoutingPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Strict):
    lines_per_task: int = Field(4, ge=1, description="records per ingest read task (small: parallel replay)")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="images with more pixels are rejected as decompression bombs"
    )
    max_image_bytes: int = Field(64 * 1024 * 1024, ge=1)
    raw_keep_chars: int = Field(2000, ge=0, description="how much of an invalid record's raw text is kept")


class ReplayConfig(_Strict):
    actors: int | None = Field(None, ge=1, description="replay actors; default: one per CPU")
    cpus_per_actor: float = Field(0.5, gt=0, le=64, description="fractional CPUs keep other stages alive")
    batch_size: int = Field(2, ge=1)
    cell_timeout_s: float = Field(20.0, gt=0)
    total_timeout_s: float = Field(90.0, gt=0)
    memory_mb: int = Field(3072, ge=512)


class JudgeConfig(_Strict):
    visual_tokens: int = Field(1280, ge=16, description="visual token budget of the target model")
    patch_px: int = Field(28, ge=1, description="pixels per side of one visual token")
    batch_size: int = Field(4, ge=1)
    cpus_per_task: float = Field(0.5, gt=0)


class RunConfig(_Strict):
    ingest: IngestConfig = IngestConfig()
    replay: ReplayConfig = ReplayConfig()
    judges: JudgeConfig = JudgeConfig()
    routing: RoutingPolicy = RoutingPolicy()

    def config_hash(self) -> str:
        """Stable hash of every setting that can change an output row."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and how to fix it."""


def load_config(path: Path | None) -> RunConfig:
    """Load and validate a YAML config file; None gives the defaults."""
    if path is None:
        return RunConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with a YAML file or omit it")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (ingest, replay, judges, routing)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"config file {path} is invalid:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  - {where}: {err['msg']} (got {err.get('input')!r})")
        lines.append("Fix these keys (see README 'Configuration') and run again.")
        raise ConfigError("\n".join(lines)) from exc
