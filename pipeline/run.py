"""The curation job: ingest -> replay -> judges -> routing -> write, streamed through Ray Data.

All Ray plumbing (init, resources, actor pools, batch sizes) lives here; the stages are plain
functions and classes in their own modules.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import ray

from judges import metric_judges
from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.ingest import discover_inputs, ingest_batch, plan_read_tasks
from pipeline.judge import JudgeStage
from pipeline.llm_judge import LLMJudgeStage
from pipeline.manifest import build_manifest, write_manifest
from pipeline.metrics import StageMetrics
from pipeline.replay import ReplayActor
from pipeline.route import route_batch
from schemas import sample as S

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
JUDGE_CACHE_DIR = "judge_cache"  # LLM judge responses, kept with the output so reruns are free


def init_ray(address: str | None = None, quiet: bool = False, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per run. Local runs stay on loopback."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        return
    # Keeps a local single-node Ray on 127.0.0.1 instead of the machine's network address.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=not quiet,
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def replay_pool_size(cfg: RunConfig) -> int:
    """One replay actor per CPU by default (each holds one sandbox), at least one."""
    if cfg.replay.actors:
        return cfg.replay.actors
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus))


def run_pipeline(
    inputs: list[Path],
    out_dir: Path,
    cfg: RunConfig,
    address: str | None = None,
    limit: int | None = None,
    quiet: bool = False,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns the manifest (also written as manifest.json)."""
    started = time.time()
    timings: dict[str, float] = {}
    files = discover_inputs(inputs)
    t = time.perf_counter()
    tasks = plan_read_tasks(files, cfg.ingest.lines_per_task, limit)
    input_records = sum(task.count for task in tasks)
    timings["plan_s"] = round(time.perf_counter() - t, 3)

    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    lineage = {S.LIN_PIPELINE_VERSION: __version__, S.LIN_CONFIG_HASH: cfg.config_hash(), S.LIN_RUN_ID: run_id}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".staging-{run_id}"

    t = time.perf_counter()
    init_ray(address, quiet=quiet, num_cpus=num_cpus)
    timings["ray_init_s"] = round(time.perf_counter() - t, 3)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not quiet
    metrics = StageMetrics.remote()

    t = time.perf_counter()
    if tasks:
        pool = replay_pool_size(cfg)
        ds = ray.data.from_items([asdict(task) for task in tasks], override_num_blocks=len(tasks))
        ds = ds.map_batches(
            partial(ingest_batch, cfg=cfg.ingest), batch_size=1, batch_format="numpy", num_cpus=0.25
        )
        ds = ds.map_batches(
            ReplayActor,
            fn_constructor_kwargs={"cfg": cfg.replay, "stage_metrics": metrics},
            batch_size=cfg.replay.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=cfg.replay.cpus_per_actor,
        )
        judges_factory = partial(metric_judges, cfg.judges.visual_tokens, cfg.judges.patch_px)
        ds = ds.map_batches(
            JudgeStage,
            fn_constructor_kwargs={"judges_factory": judges_factory, "stage_metrics": metrics},
            batch_size=cfg.judges.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool),
            num_cpus=cfg.judges.cpus_per_task,
        )
        llm = cfg.judges.llm
        if llm.enabled:
            ds = ds.map_batches(
                LLMJudgeStage,
                fn_constructor_kwargs={
                    "settings": llm, "cache_dir": str(out_dir / JUDGE_CACHE_DIR), "stage_metrics": metrics
                },
                batch_size=llm.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=llm.pool_size()),
                num_cpus=0.1,  # waits on the network; the endpoint is the bottleneck
            )
        ds = ds.map_batches(
            route_batch,
            fn_kwargs={"policy": cfg.routing, "lineage": lineage, "stage_metrics": metrics},
            batch_format="pyarrow",
            num_cpus=0.25,
        )
        ds.write_parquet(str(staging / SHARDS_DIR), partition_cols=list(S.PARTITION_COLUMNS))
    else:
        (staging / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    timings["execute_s"] = round(time.perf_counter() - t, 3)

    # Swap the finished shards in only once the whole run succeeded.
    final = out_dir / SHARDS_DIR
    if final.exists():
        shutil.rmtree(final)
    (staging / SHARDS_DIR).rename(final)
    shutil.rmtree(staging, ignore_errors=True)

    manifest = build_manifest(
        out_dir=out_dir,
        run_id=run_id,
        cfg=cfg,
        inputs=[str(f) for f in files],
        input_records=input_records,
        timings={**timings, "stages": ray.get(metrics.get.remote())},
        counters=ray.get(metrics.get_counters.remote()),
        started=started,
    )
    write_manifest(out_dir, manifest)
    return manifest
