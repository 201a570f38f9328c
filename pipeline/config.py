"""Run configuration: one validated pydantic model, loaded from YAML, hashed into the lineage.

Validation happens before Ray starts, so a typo in a threshold stops the run with a message
that names the key and what it accepts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from judges.llm import LLMJudgeSettings
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
    tasks_per_window: int = Field(
        500, ge=1, description="read tasks per Ray Data execution: Ray keeps per-block state in the driver, "
        "so the corpus streams through in windows to keep the driver's memory flat",
    )
    image_roots: list[Path] = Field(
        default_factory=list,
        description="folders where relative image paths and bare file names are looked up when they are "
        "not found beside the record's file (--image-root, repeatable); data made on another machine",
    )
    path_map: dict[str, str] = Field(
        default_factory=dict,
        description="image path prefix -> replacement prefix, applied before lookup (longest prefix first), "
        "e.g. {'/NEW_EDS/miaojw/projects/MMAD': '/data/mmad'}: remaps absolute paths of another machine",
    )

    @field_validator("image_roots")
    @classmethod
    def _roots_exist(cls, roots: list[Path]) -> list[Path]:
        missing = [str(r) for r in roots if not Path(r).expanduser().is_dir()]
        if missing:
            raise ValueError(
                f"image root(s) {', '.join(missing)} are not folders; pass existing folders holding the images"
            )
        return [Path(r).expanduser().resolve() for r in roots]

    @field_validator("path_map")
    @classmethod
    def _prefixes_nonempty(cls, mapping: dict[str, str]) -> dict[str, str]:
        if any(not k.strip() for k in mapping):
            raise ValueError("path_map keys must be non-empty path prefixes such as /old/machine/images")
        return mapping


class ReplayConfig(_Strict):
    actors: int | None = Field(None, ge=1, description="replay actors; default: one per CPU")
    cpus_per_actor: float = Field(0.5, gt=0, le=64, description="fractional CPUs keep other stages alive")
    batch_size: int = Field(2, ge=1)
    cell_timeout_s: float = Field(20.0, gt=0)
    total_timeout_s: float = Field(90.0, gt=0)
    memory_mb: int = Field(3072, ge=512)
    sandbox: Literal["zygote", "process"] = Field(
        "zygote", description="zygote: forks of one pre-imported process (~15 ms); process: fresh interpreter (~0.7 s)"
    )
    min_sandbox_level: Literal["strict", "standard", "weak"] = Field(
        "strict", description="refuse to run below this isolation level (see `twi-curate sandbox check`)"
    )


class JudgeConfig(_Strict):
    visual_tokens: int = Field(1280, ge=16, description="visual token budget of the target model")
    patch_px: int = Field(28, ge=1, description="pixels per side of one visual token")
    batch_size: int = Field(4, ge=1)
    cpus_per_task: float = Field(0.5, gt=0)
    llm: LLMJudgeSettings = LLMJudgeSettings()


class DedupConfig(_Strict):
    exact: bool = Field(True, description="reject records whose sample_id an earlier record already has")
    image_hamming: int | None = Field(
        4, ge=0, le=16,
        description="same-image candidates: max pHash Hamming distance of first images (null: identical bytes only)",
    )
    image_max_tile_diff: float | None = Field(
        5.0, ge=0, le=255,
        description="same image: max mean grey difference over any 8x8 px window of the <=512 px grey images "
        "(blurred, compared at the smaller one's size; null: pHash alone)",
    )
    benchmark_image_hamming: int | None = Field(
        4, ge=0, le=16, description="benchmark image match: max pHash Hamming distance (null: off)"
    )
    benchmark_questions: bool = Field(True, description="match normalised questions against the benchmark")
    best_of_n: int | None = Field(
        1, ge=1,
        description="records sharing (image, question) are rollouts of one sample: keep the best N by score, "
        "reject the others as duplicate_of:<best> (null: keep all)",
    )


class RunConfig(_Strict):
    ingest: IngestConfig = IngestConfig()
    dedup: DedupConfig = DedupConfig()
    replay: ReplayConfig = ReplayConfig()
    judges: JudgeConfig = JudgeConfig()
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy)  # made when used: every registered dimension

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


def with_llm_judge(cfg: RunConfig, endpoint: str | None = None, model: str | None = None) -> RunConfig:
    """Apply --judge-endpoint/--judge-model (then TWI_JUDGE_ENDPOINT/TWI_JUDGE_MODEL) to the config."""
    llm = cfg.judges.llm
    update = {k: v for k, v in {"endpoint": endpoint, "model": model}.items() if v}
    llm = llm.model_copy(update=update).resolved()
    if bool(llm.endpoint) != bool(llm.model):
        raise ConfigError(
            "an LLM judge needs both an endpoint and a model: pass --judge-endpoint URL and "
            "--judge-model NAME (or set judges.llm.endpoint/model, or TWI_JUDGE_ENDPOINT/TWI_JUDGE_MODEL)"
        )
    if llm.endpoint and not llm.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"judge endpoint {llm.endpoint!r} must be an http(s) URL such as http://host:8000/v1")
    return cfg.model_copy(update={"judges": cfg.judges.model_copy(update={"llm": llm})})


def with_image_roots(cfg: RunConfig, roots: list[Path]) -> RunConfig:
    """Append ``--image-root`` folders to ``ingest.image_roots`` (validated like the config key)."""
    if not roots:
        return cfg
    try:
        ingest = IngestConfig.model_validate(
            {**cfg.ingest.model_dump(), "image_roots": [*cfg.ingest.image_roots, *roots]}
        )
    except ValidationError as exc:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"--image-root: {msgs}") from exc
    return cfg.model_copy(update={"ingest": ingest})
