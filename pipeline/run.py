"""The curation job, in the order it runs (each step lives in the module named):

1. plan: the inputs' read tasks streamed to a plan file in the run's staging folder; a killed run
   with the same inputs and settings continues its staging (pipeline.run_state, pipeline.publish);
2. pre-pass: what OUT holds already (pipeline.ledger) and the exact duplicates
   (pipeline.dedup_pass): neither is replayed nor judged; a small input's pre-pass runs in the
   driver, beside the sandbox check and Ray start;
3. execute: the curation stages of :func:`curation_stages`, ingest -> replay -> metric judges ->
   LLM judges -> routing (fused into as few actor pools as possible), all of one shape (pipeline.stage, with the resources of
   pipeline.ray_plan), streamed through Ray Data and committed in units: the earlier rows
   (carried over, or recomputed from the first stage whose settings changed), then one unit per
   window of read tasks;
4. post-pass: benchmark contamination and best-of-N on the staged shards (pipeline.dedup_pass);
5. the manifest and the atomic publish (pipeline.run_state).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import ray

from judges import metric_judges
from pipeline.config import RunConfig
from pipeline.dedup_pass import dedup_post_pass, keys_in_driver, post_keys_needed, pre_pass
from pipeline.execute import execute_units
from pipeline.ledger import STAGES
from pipeline.publish import OutLock, has_results, write_failure
from pipeline.ray_plan import (
    LLM_ACTOR_CPUS,
    TASK_CPUS,
    StageArgs,
    init_ray,
    plan_stages,
    start_metrics,
    task_concurrency,
)
from pipeline.run_state import Run, mark_resumable, open_run, open_staging, plan_run, publish_run
from pipeline.stage import Fused, Resources, Stage
from pipeline.stages.dedup import KEYS_DIR, load_benchmark
from pipeline.stages.ingest import IngestStage, discover_inputs
from pipeline.stages.judge import JudgeStage
from pipeline.stages.llm_judge import LLMJudgeStage
from pipeline.stages.replay import ReplayStage, ensure_sandbox_level
from pipeline.stages.route import RouteStage
from pipeline.tools.shards import SHARDS_DIR

JUDGE_CACHE_DIR = "judge_cache"  # LLM judge responses, kept with the output so reruns are free


class NothingToCurate(RuntimeError):
    """The inputs hold no record and OUT already has results: the run adds nothing and changes nothing."""


def curation_stages(first: str, a: StageArgs) -> list[Stage]:
    """The curation stages from ``first`` ("ingest", "replay", "judges" or "routing") to routing,
    in order: ingest (read tasks -> canonical rows; no image decoded) -> sandboxed replay -> the
    metric judges (+ the dedup keys) -> LLM judges (when configured) -> routing. New records enter
    at "ingest"; earlier rows recomputed after a settings change enter at the first changed stage
    (pipeline.ledger).

    The stages run in as few pools as their resources allow (:class:`Fused`): ingest runs in the
    replay actor, one read task (``ingest.lines_per_task`` records) per batch, so the records'
    images go into Ray's object store once instead of out of an ingest task and into the actor;
    replay and the metric judges share the actor (the replayed images stay in it); routing (~1 ms
    a row) runs in the last actor stage, so the rows leave it routed, straight to the write. Only
    a run that re-routes stored rows and nothing else has a routing task stage. Parts fused into
    an actor ask for no CPUs of their own: the actor's request is that of replay and the judges."""
    if first != "ingest" and first not in STAGES:
        raise ValueError(f"unknown stage {first!r}")
    cfg, cpus, llm = a.cfg, a.resources, a.cfg.judges.llm
    judges = partial(metric_judges, cfg.judges.visual_tokens, cfg.judges.patch_px, cfg.routing.recovered_errors)
    judge = JudgeStage(judges_factory=judges, resources=Resources(cpus["judge_cpus_per_actor"]),
                       batch_size=cfg.judges.batch_size, workers=a.pool_size, elastic=a.elastic)
    in_actor = Resources(0.0)
    stages: list[Stage] = []
    if first in ("ingest", "replay"):
        replay = ReplayStage(cfg=cfg.replay, allow_weak_sandbox=a.allow_weak_sandbox,
                             resources=Resources(cpus["replay_cpus_per_actor"], a.replay_resources),
                             batch_size=cfg.replay.batch_size, workers=cpus.get("replay_actors", a.pool_size),
                             elastic=a.elastic)
        parts: list[Stage] = [replay, replace(judge, keys_dir=str(a.keys_dir) if a.keys_dir is not None else None)]
        if first == "ingest":
            parts.insert(0, IngestStage(cfg=cfg.ingest, resources=in_actor, batch_size=1))
        stages.append(Fused(*parts))
    elif first == "judges":  # stored replays re-judged
        stages.append(judge)
    if first != "routing" and llm.enabled:
        stages.append(LLMJudgeStage(settings=llm, cache_dir=str(a.out_dir / JUDGE_CACHE_DIR),
                                    resources=Resources(LLM_ACTOR_CPUS), batch_size=llm.batch_size,
                                    workers=llm.pool_size()))
    route = RouteStage(policy=cfg.routing, lineage=a.lineage, resources=Resources(TASK_CPUS),
                       workers=task_concurrency())
    if stages:  # routing in the last actor
        return [*stages[:-1], Fused(stages[-1], replace(route, resources=in_actor, workers=None))]
    return [route]


def timed_check(run: Run, check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with run.timed("sandbox_check_s"):
        return check()


def refuse_or_pass(checking: Future | None, started_ray: bool) -> dict[str, Any] | None:
    """The sandbox check's report (None when none ran). When it refuses, a Ray this run started
    is shut down again before the refusal is raised: no stage ever ran below the level."""
    if checking is None:
        return None
    try:
        return checking.result()
    except BaseException:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        raise


def run_pipeline(
    inputs: list[Path],
    out_dir: Path,
    cfg: RunConfig,
    address: str | None = None,
    limit: int | None = None,
    quiet: bool = False,
    num_cpus: int | None = None,
    allow_weak_sandbox: bool = False,
    warn: Callable[[str], None] | None = None,
    format: str | None = None,
    benchmark: Path | None = None,
    recompute: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Curate ``inputs`` into ``out_dir``; returns the manifest (also written as manifest.json).

    One run at a time per OUT (pipeline.publish: a second one gets :class:`OutLockedError`); the
    result is published atomically, and OUT keeps what earlier runs curated (pipeline.ledger):
    records it holds already are skipped, earlier rows are carried over, or recomputed from the
    first stage whose settings changed (``recompute`` forces a stage). An input with no record
    into an OUT with results raises :class:`NothingToCurate`; a failed write
    :class:`WriteFailedError` (OUT unchanged).

    While Ray starts, and before any Ray work, the replay sandbox is checked against ``replay.min_sandbox_level``
    (pipeline.stages.replay.ensure_sandbox_level): below it the run stops with :class:`SandboxLevelError`
    (a Ray it started is shut down again),
    unless ``allow_weak_sandbox`` (then ``warn`` gets a loud message). ``format`` forces one input
    adapter (pipeline.formats) instead of detecting each file's; ``benchmark`` is a JSONL file of
    benchmark items to decontaminate against (pipeline.stages.dedup). ``progress``, when given, is called
    about every second while the records go through the stages (pipeline.progress.progress_poller).
    """
    files = discover_inputs(inputs)
    bench = load_benchmark(benchmark, cfg.ingest) if benchmark else None
    run = open_run(files, out_dir, cfg)
    check_sandbox = partial(ensure_sandbox_level, cfg, allow_weak_sandbox, warn)
    with OutLock(run.out_dir, run.run_id):
        open_staging(run, limit, format, benchmark, recompute)
        try:
            plan_run(run, limit, format)  # 1. plan
            if run.input_records == 0 and has_results(run.out_dir):
                raise NothingToCurate(f"0 input records in {', '.join(str(i) for i in inputs)}: nothing to curate; "
                                      f"the results already in {run.out_dir} were left untouched.")
            mark_resumable(run)
            # 2. the pre-pass; a small input's runs in the driver (keys_in_driver), beside the
            # sandbox check and Ray start
            with ThreadPoolExecutor(2, thread_name_prefix="twi-beside") as beside:
                early = beside.submit(pre_pass, run, bench, recompute) if keys_in_driver(run) else None
                # The sandbox is checked on a first run while Ray starts (most of a start is waiting
                # for Ray's processes), and passes before any Ray work; into an OUT with results, once
                # the pre-pass knows that something is to be replayed (a rerun replays nothing).
                checking = beside.submit(timed_check, run, check_sandbox) if run.n_tasks and run.previous is None else None
                started = not ray.is_initialized()
                try:
                    with run.timed("ray_init_s"):
                        init_ray(address, quiet=quiet, num_cpus=num_cpus)
                finally:  # a refusal wins over a failed Ray start
                    run.sandbox = refuse_or_pass(checking, started)
                ray.data.DataContext.get_current().enable_progress_bars = not quiet
                metrics = start_metrics()
                if early is not None:
                    early.result()
                else:
                    pre_pass(run, bench, recompute)
            replays = run.input_records > run.known or run.first == "replay"
            if run.sandbox is None and replays and (run.n_tasks or run.previous):
                with run.timed("sandbox_check_s"):
                    run.sandbox = check_sandbox()

            with run.timed("execute_s"):  # 3. the curation stages
                (run.staging / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
                keys_dir = run.staging / KEYS_DIR if post_keys_needed(cfg, bench) else None
                stage_args = plan_stages(cfg, metrics, run.lineage, run.out_dir, allow_weak_sandbox, keys_dir)
                execute_units(run, stage_args, curation_stages, progress)
            with run.timed("best_of_n_s"):  # 4. post-pass
                run.dedup_counts.update(dedup_post_pass(run.staging, cfg, bench, run.lineage) if run.n_tasks else {})
            return publish_run(run, metrics, stage_args.resources)  # 5. manifest and publish
        except KeyboardInterrupt:
            raise  # the staging stays: the same command resumes after the last complete unit
        except BaseException as exc:
            shutil.rmtree(run.staging, ignore_errors=True)
            failure = write_failure(exc, run.staging)
            if failure is not None:
                raise failure from exc
            raise
