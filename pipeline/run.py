"""The curation job: ingest -> replay -> judges -> routing -> write, streamed through Ray Data.

All Ray plumbing (init, resources, actor pools, batch sizes) lives here; the stages are plain
functions and classes in their own modules.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from judges import metric_judges
from pipeline import __version__
from pipeline.best_of_n import apply_contamination, select_best
from pipeline.config import RunConfig
from pipeline.dedup import (
    GROUPS_FILE,
    KEYS_DIR,
    PENDING_DIR,
    attach_verdicts,
    compact_keys,
    find_verdicts,
    key_files,
    keys_batch,
    load_benchmark,
    post_verdicts,
)
from pipeline.ingest import (
    ReadTask,
    discover_inputs,
    ingest_batch,
    iter_read_tasks,
    read_plan,
    task_items,
    write_plan,
)
from pipeline.judge import JudgeStage
from pipeline.ledger import (
    STAGES,
    carry_over,
    first_changed_stage,
    known_and_superseded,
    pending_tasks,
    stage_hashes,
    write_ledger,
)
from pipeline.llm_judge import LLMJudgeStage
from pipeline.manifest import MANIFEST, build_manifest, read_manifest, write_manifest
from pipeline.metrics import StageMetrics
from pipeline.publish import (
    RESUME_FILE,
    STAGING_PREFIX,
    UNITS_DIR,
    OutLock,
    Units,
    find_resumable,
    has_results,
    publish,
    resume_fingerprint,
    sweep_leftovers,
    write_failure,
    write_json_atomic,
)
from pipeline.replay import ReplayActor
from pipeline.route import route_batch
from pipeline.sandbox.levels import SandboxLevelError, check_level
from pipeline.shards import SHARDS_DIR, read_shard_file
from schemas import sample as S

log = logging.getLogger(__name__)


PLAN_FILE = "plan.jsonl"
PREVIOUS_ROWS = "previous-rows"  # earlier rows to recompute (work dir)
RUNS_DIR = "runs"  # OUT/runs/<run_id>.json: the manifest of every run
JUDGE_CACHE_DIR = "judge_cache"  # LLM judge responses, kept with the output so reruns are free


class NothingToCurate(RuntimeError):
    """The inputs hold no record and OUT already has results: the run adds nothing and changes nothing."""


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
        address="local",  # a new local Ray, never another one running on this machine (RAY_ADDRESS, `ray start`)
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


TASK_CPUS = 0.25  # each stateless task stage (ingest, route); both must fit beside the actor pools


def task_concurrency() -> int:
    """How many tasks of one task stage (ingest, route) run at once: one per CPU. Their small
    CPU request (TASK_CPUS) keeps them schedulable beside the actor pools, but uncapped it lets
    Ray start four worker processes per CPU for each stage, and every new worker pays the
    pipeline's imports (~2.5 s of CPU) for ~10 ms of work per record."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


LLM_ACTOR_CPUS = 0.1  # an LLM judge actor waits on the network; the endpoint is the bottleneck


def stage_cpus(cfg: RunConfig, cluster_cpus: float, pool: int) -> dict[str, float]:
    """CPUs per replay actor and per judge actor, so that every stage can run at once.

    Ray Data runs the replay pool and the judge pool (``pool`` actors each), the LLM pool and
    the ingest and route tasks together; if their requests exceed the cluster, a stage never
    gets a slot: the task stages starve and the job waits forever without an error (seen at
    1 CPU), or the judge pool never grows past one actor and caps throughput (seen at 2). The
    configured ``replay.cpus_per_actor`` and ``judges.cpus_per_task`` are kept when they fit and
    scaled down together (never below 0.05) when they do not. The requests are Ray's
    bookkeeping, not a CPU quota: scaled-down actors still use a whole core when it is free.
    """
    llm = cfg.judges.llm
    fixed = 2 * TASK_CPUS + (LLM_ACTOR_CPUS * llm.pool_size() if llm.enabled else 0.0)
    replay, judge = cfg.replay.cpus_per_actor, cfg.judges.cpus_per_task
    wanted = pool * (replay + judge)
    room = max(float(cluster_cpus) - fixed, 0.0)
    scale = min(1.0, room / wanted) if wanted > 0 else 1.0
    return {
        "cluster_cpus": float(cluster_cpus),
        "replay_cpus_per_actor": round(max(replay * scale, 0.05), 4),
        "judge_cpus_per_actor": round(max(judge * scale, 0.05), 4),
    }


def ensure_sandbox_level(
    cfg: RunConfig, allow_weak_sandbox: bool = False, warn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Start a sandbox as configured and compare its layers with ``replay.min_sandbox_level``.

    Raises :class:`SandboxLevelError` (saying which layers are missing and what to do) when the
    level is not met, unless ``allow_weak_sandbox``. Returns the check for the manifest.
    """
    ok, report = check_level(cfg.replay)
    if not ok:
        if not allow_weak_sandbox:
            raise SandboxLevelError("refusing to replay untrusted code: " + report.advice())
        (warn or log.warning)(
            f"WEAK SANDBOX: {report.summary()}; missing: {', '.join(report.missing) or report.error}. "
            "Proceeding only because of --allow-weak-sandbox: the replayed code is less isolated than configured."
        )
    return report.as_dict()


def ingest_dataset(tasks: list[ReadTask], cfg: RunConfig) -> ray.data.Dataset:
    """Read tasks -> canonical rows, one small block per task (so replay spreads over actors).
    No image is decoded here: the judge stage writes the dedup keys from its own decode."""
    ds = ray.data.from_items(task_items(tasks), override_num_blocks=len(tasks))
    return ds.map_batches(partial(ingest_batch, cfg=cfg.ingest), batch_size=1, batch_format="numpy",
                          num_cpus=TASK_CPUS, concurrency=task_concurrency())


KEY_TASKS_PER_BATCH = 16  # the key pass has no replay behind it: bigger batches, fewer Ray tasks


def post_keys_needed(cfg: RunConfig, benchmark: list | None) -> bool:
    """The main pass writes image keys for the post-pass: best-of-N groups, benchmark overlap."""
    return cfg.dedup.best_of_n is not None or bool(benchmark)


def dedup_verdicts(
    windows: Iterable[list[ReadTask]], cfg: RunConfig, benchmark: list | None, work_dir: Path,
    previous_shards: Path | None = None,
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, int], set[tuple[str, int]]]:
    """The light pre-pass (exact duplicates, and records OUT already holds, so they are neither
    replayed nor judged): Ray Data parses every record window by window, decoding no image, and
    appends its light key (sample_id, file, index, question and image-bytes hashes) to
    ``work_dir/prekeys``; DuckDB finds the duplicates (pipeline.dedup) and, with
    ``previous_shards``, the records already curated and the earlier rows this input replaces
    (pipeline.ledger). Returns the verdicts of the flagged records only, counts for the manifest
    and the superseded (file, index). Groups and contamination come after the main pass
    (:func:`dedup_post_pass`)."""
    if not cfg.dedup.exact and previous_shards is None:
        return {}, {}, set()
    keys_dir = work_dir / "prekeys"
    shutil.rmtree(keys_dir, ignore_errors=True)  # a resumed run's pre-pass starts afresh
    cpus = int(ray.cluster_resources().get("CPU", 1))
    for tasks in windows:
        blocks = max(-(-len(tasks) // KEY_TASKS_PER_BATCH), min(len(tasks), 4 * cpus))
        ds = ray.data.from_items(task_items(tasks), override_num_blocks=blocks)
        ds = ds.map_batches(
            partial(keys_batch, cfg=cfg.ingest), batch_size=-(-len(tasks) // blocks), batch_format="numpy",
            num_cpus=TASK_CPUS, concurrency=task_concurrency(),
        )
        ds.write_parquet(str(keys_dir))
    files = sorted(str(p) for p in keys_dir.rglob("*.parquet"))
    verdicts = find_verdicts(files, cfg.dedup, None, work_dir) if cfg.dedup.exact else {}
    counts = {"duplicates": sum(1 for v in verdicts.values() if v.get(S.DUPLICATE_OF))}
    superseded: set[tuple[str, int]] = set()
    if previous_shards is not None:
        known, superseded = known_and_superseded(files, previous_shards)
        for where, verdict in known.items():
            verdicts.setdefault(where, {}).update(verdict)
        counts.update(already_curated=len(known), superseded=len(superseded))
    return verdicts, counts, superseded


def dedup_post_pass(
    staging: Path, cfg: RunConfig, benchmark: list | None, lineage: dict[str, Any]
) -> dict[str, int]:
    """After the main pass, on the staged shards: benchmark contamination, then best-of-N
    (pipeline.dedup.post_verdicts over the keys the main pass's ingest wrote, then
    pipeline.best_of_n). Counts for the manifest."""
    if not post_keys_needed(cfg, benchmark):
        return {}
    groups = staging / GROUPS_FILE if cfg.dedup.best_of_n is not None else None
    contaminated = post_verdicts(key_files(staging / KEYS_DIR), cfg.dedup, benchmark, staging, groups_path=groups)
    counts = {"contaminated": apply_contamination(staging / SHARDS_DIR, contaminated, cfg.routing, lineage, staging)}
    counts.update(best_of_n(staging, cfg, lineage))
    return counts


def best_of_n(staging: Path, cfg: RunConfig, lineage: dict[str, Any]) -> dict[str, int]:
    """After the main pass: keep the best ``dedup.best_of_n`` rollouts of each (image, question)
    group in the staged shards, reject the others (pipeline.best_of_n). Counts for the manifest."""
    groups = staging / GROUPS_FILE
    if cfg.dedup.best_of_n is None or not groups.is_file():
        return {}
    counts = select_best(staging / SHARDS_DIR, groups, cfg.dedup.best_of_n, cfg.routing, lineage, staging)
    return {f"best_of_n_{k}": v for k, v in counts.items()}


def dedup_tasks(
    tasks: list[ReadTask], cfg: RunConfig, benchmark: list | None, work_dir: Path
) -> tuple[list[ReadTask], dict[str, int]]:
    """:func:`dedup_verdicts` for a task list in memory; returns the tasks carrying their verdicts."""
    window = cfg.ingest.tasks_per_window
    verdicts, counts = dedup_verdicts(
        (tasks[k : k + window] for k in range(0, len(tasks), window)), cfg, benchmark, work_dir
    )
    return attach_verdicts(tasks, verdicts), counts


@dataclass
class StageArgs:
    """What every stage of a run needs (built once per run, see :func:`add_stages`)."""

    cfg: RunConfig
    metrics: Any
    lineage: dict[str, Any]
    pool_size: int
    resources: dict[str, float]
    out_dir: Path
    allow_weak_sandbox: bool
    keys_dir: Path | None
    replay_resources: dict[str, float] | None = None  # {"sandbox": x} on a cluster that declares it
    elastic: bool = False  # several nodes: pools grow from one actor as each node has room

    def pool(self, size: int) -> ray.data.ActorPoolStrategy:
        """A fixed pool on one machine (every actor fits: stage_cpus). On a multi-node cluster
        the fractional requests must also fit node by node, and a node may leave: a pool that
        insisted on ``size`` actors could wait forever for one that cannot be placed, and starve
        the task stages, so it grows from one actor as far as the nodes have room."""
        if self.elastic and size > 1:
            return ray.data.ActorPoolStrategy(min_size=1, max_size=size)
        return ray.data.ActorPoolStrategy(size=size)


SANDBOX_RESOURCE = "sandbox"  # custom resource of the nodes prepared for untrusted code (ray_cluster.yaml)


def replay_placement(cluster: dict[str, float], pool: int, cpus_per_actor: float) -> tuple[int, dict[str, float] | None]:
    """Where replay actors may run: on a cluster whose nodes declare the ``sandbox`` resource,
    only there (each actor asks for as much of it as of CPU), and no more actors than those nodes
    hold (an actor that can never be placed would stall the run). Elsewhere: anywhere."""
    total = cluster.get(SANDBOX_RESOURCE)
    if not total:
        return pool, None
    return max(1, min(pool, int(total / cpus_per_actor + 1e-9))), {SANDBOX_RESOURCE: cpus_per_actor}


def add_stages(ds: ray.data.Dataset, first: str, a: StageArgs) -> ray.data.Dataset:
    """The curation stages from ``first`` ("replay", "judges" or "routing") to routing, in order:
    sandboxed replay -> metric judges (+ the dedup keys) -> LLM judges (when configured) -> routing.
    New records enter at "replay"; earlier rows recomputed after a settings change enter at the
    first changed stage (pipeline.ledger)."""
    cfg = a.cfg
    if first not in STAGES:
        raise ValueError(f"unknown stage {first!r}")
    judges_factory = partial(metric_judges, cfg.judges.visual_tokens, cfg.judges.patch_px, cfg.routing.recovered_errors)
    if first == "replay":  # replay and the metric judges in one actor (pipeline.replay.ReplayActor)
        judging = partial(JudgeStage, judges_factory, a.metrics, str(a.keys_dir) if a.keys_dir is not None else None)
        ds = ds.map_batches(
            ReplayActor,
            fn_constructor_kwargs={"cfg": cfg.replay, "stage_metrics": a.metrics,
                                   "allow_weak_sandbox": a.allow_weak_sandbox, "judging": judging},
            batch_size=cfg.replay.batch_size,
            batch_format="pyarrow",
            compute=a.pool(a.resources.get("replay_actors", a.pool_size)),
            num_cpus=a.resources["replay_cpus_per_actor"] + a.resources["judge_cpus_per_actor"],
            **({"resources": a.replay_resources} if a.replay_resources else {}),
        )
    elif first == "judges":  # stored replays re-judged
        ds = ds.map_batches(
            JudgeStage,
            fn_constructor_kwargs={"judges_factory": judges_factory, "stage_metrics": a.metrics},
            batch_size=cfg.judges.batch_size,
            batch_format="pyarrow",
            compute=a.pool(a.pool_size),
            num_cpus=a.resources["judge_cpus_per_actor"],
        )
    if first in ("replay", "judges"):
        llm = cfg.judges.llm
        if llm.enabled:
            ds = ds.map_batches(
                LLMJudgeStage,
                fn_constructor_kwargs={
                    "settings": llm, "cache_dir": str(a.out_dir / JUDGE_CACHE_DIR), "stage_metrics": a.metrics
                },
                batch_size=llm.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=llm.pool_size()),
                num_cpus=LLM_ACTOR_CPUS,
            )
    return ds.map_batches(
        route_batch,
        fn_kwargs={"policy": cfg.routing, "lineage": a.lineage, "stage_metrics": a.metrics},
        batch_format="pyarrow",
        num_cpus=TASK_CPUS,
        concurrency=task_concurrency(),
    )


def read_shard_rows(batch: Any) -> Any:
    """Ray Data fn: a shard file (one per batch) -> its rows as canonical columns, with the hive
    partition columns (route, discipline) restored from its path."""
    return read_shard_file(Path(batch.column("path")[0].as_py()), Path(batch.column("base")[0].as_py()))


def recompute_previous(previous_rows: Path, dest: Path, first: str, a: StageArgs) -> int:
    """Earlier rows (hard links of the previous version's shards under ``previous_rows``) through
    the stages from ``first`` on, into ``dest``. Returns the rows recomputed."""
    files = sorted(str(p) for p in previous_rows.rglob("*.parquet"))
    if not files:
        return 0
    # one block per shard file, read by a task (Ray's read_parquet needs fsspec's HTTP extras here)
    ds = ray.data.from_items([{"path": f, "base": str(previous_rows)} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(read_shard_rows, batch_size=1, batch_format="pyarrow", num_cpus=TASK_CPUS)
    # their dedup keys are not written again: best-of-N and contamination were settled when they were added
    add_stages(ds, first, replace(a, keys_dir=None)).write_parquet(str(dest), partition_cols=list(S.PARTITION_COLUMNS))
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    shutil.rmtree(previous_rows)
    return n


PROGRESS_EVERY_S = 1.0  # how often run_pipeline's ``progress`` callback is called


@contextmanager
def progress_poller(
    progress: Callable[[dict[str, Any]], None] | None, metrics: Any, total: int, done: int = 0
) -> Iterator[None]:
    """While the curation stages run, a driver thread calls ``progress`` every PROGRESS_EVERY_S
    (and once more at the end) with ``{"total": records to route, "done": records routed
    ("done" of them were routed by units committed before, e.g. of a resumed run), "stages":
    {stage: rows since the start}, "elapsed_s": seconds since the start}``, read from the
    StageMetrics actor. A failing callback or poll never fails the run."""
    if progress is None:
        yield
        return
    start = time.perf_counter()
    base = {k: v["rows"] for k, v in ray.get(metrics.get.remote()).items()}  # e.g. rows recomputed before
    stop = threading.Event()

    def report() -> None:
        try:
            stats = ray.get(metrics.get.remote(), timeout=10)
            stages = {k: int(v["rows"] - base.get(k, 0)) for k, v in stats.items()}
            progress({"total": total, "done": done + stages.get("routing", 0), "stages": stages,
                      "elapsed_s": time.perf_counter() - start})
        except Exception:  # noqa: BLE001 - the display must not stop the run
            log.debug("progress report failed", exc_info=True)

    def poll() -> None:
        report()
        while not stop.wait(PROGRESS_EVERY_S):
            report()

    thread = threading.Thread(target=poll, name="twi-curate-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    report()  # the final counts (not after a failure: nobody shows them)


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

    Before any Ray work the replay sandbox is checked against ``replay.min_sandbox_level``
    (:func:`ensure_sandbox_level`): below it the run stops with :class:`SandboxLevelError`, unless
    ``allow_weak_sandbox`` (then ``warn`` gets a loud message). ``format`` forces one input
    adapter (pipeline.formats) instead of detecting each file's; ``benchmark`` is a JSONL file of
    benchmark items to decontaminate against (pipeline.dedup). ``progress``, when given, is called
    about every second while the records go through the stages (:func:`progress_poller`).
    """
    started = time.time()
    timings: dict[str, float] = {}
    files = discover_inputs(inputs)
    bench = load_benchmark(benchmark, cfg.ingest) if benchmark else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]

    with OutLock(out_dir, run_id):
        # A run killed or interrupted with the same inputs, settings and OUT state left its staging:
        # continue it (its finished units are kept); any other leftover is swept.
        previous = read_manifest(out_dir) if has_results(out_dir) else None
        fingerprint = resume_fingerprint(files, cfg, limit, format, benchmark, recompute, previous)
        resumed = find_resumable(out_dir, fingerprint)
        if resumed is not None:
            run_id = resumed.name.removeprefix(STAGING_PREFIX)
        staging = out_dir / f"{STAGING_PREFIX}{run_id}"
        lineage = {S.LIN_PIPELINE_VERSION: __version__, S.LIN_CONFIG_HASH: cfg.config_hash(), S.LIN_RUN_ID: run_id}
        swept = sweep_leftovers(out_dir, keep=resumed)  # never read, never left to fill a disk
        try:
            # The plan streams to disk and the corpus through Ray in windows of read tasks: the driver's
            # memory does not grow with the corpus (Ray keeps per-block state in the driver).
            t = time.perf_counter()
            plan = staging / PLAN_FILE
            if resumed is not None:
                input_records, n_tasks = (json.loads((staging / RESUME_FILE).read_text())[k] for k in ("records", "tasks"))
            else:
                input_records, n_tasks = write_plan(iter_read_tasks(files, cfg.ingest.lines_per_task, limit, format), plan)
            timings["plan_s"] = round(time.perf_counter() - t, 3)
            if input_records == 0 and has_results(out_dir):
                raise NothingToCurate(
                    f"0 input records in {', '.join(str(i) for i in inputs)}: nothing to curate; "
                    f"the results already in {out_dir} were left untouched."
                )
            if resumed is None:  # the plan is complete: from here on, a killed run can be continued
                write_json_atomic(staging / RESUME_FILE, {"fingerprint": fingerprint, "records": input_records,
                                                           "tasks": n_tasks})
            # The sandbox is checked before any Ray work on a first run; into an OUT with results,
            # once the pre-pass knows that something is to be replayed (a rerun replays nothing).
            t = time.perf_counter()
            sandbox = ensure_sandbox_level(cfg, allow_weak_sandbox, warn) if n_tasks and previous is None else None
            timings["sandbox_check_s"] = round(time.perf_counter() - t, 3)
            windows = partial(read_plan, plan, cfg.ingest.tasks_per_window)

            t = time.perf_counter()
            init_ray(address, quiet=quiet, num_cpus=num_cpus)
            timings["ray_init_s"] = round(time.perf_counter() - t, 3)
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = not quiet
            # The run's counters live beside the driver: a worker node lost mid-run must not take
            # them (and the LLM judges' guard) with it.
            metrics = StageMetrics.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False)).remote()

            # What OUT holds already (pipeline.ledger): skipped, carried over or recomputed.
            hashes = stage_hashes(cfg)
            if previous is not None and "stage_hashes" not in previous:
                previous = None  # written before the ledger: replaced by this run's rows
            previous_shards = out_dir / SHARDS_DIR if previous is not None else None
            first = first_changed_stage(previous["stage_hashes"] if previous else None, hashes, recompute)

            t = time.perf_counter()
            verdicts, dedup_counts, superseded = (
                dedup_verdicts(windows(), cfg, bench, staging, previous_shards) if n_tasks else ({}, {}, set()))
            timings["dedup_s"] = round(time.perf_counter() - t, 3)
            known = dedup_counts.pop("already_curated", 0)
            if sandbox is None and (input_records > known or first == "replay") and (n_tasks or previous):
                t = time.perf_counter()
                sandbox = ensure_sandbox_level(cfg, allow_weak_sandbox, warn)
                timings["sandbox_check_s"] = round(time.perf_counter() - t, 3)

            t = time.perf_counter()
            (staging / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            pool = replay_pool_size(cfg)
            resources = stage_cpus(cfg, ray.cluster_resources().get("CPU", 1), pool)
            keys_dir = staging / KEYS_DIR if post_keys_needed(cfg, bench) else None
            replay_actors, replay_resources = replay_placement(
                ray.cluster_resources(), pool, resources["replay_cpus_per_actor"])
            resources = {**resources, "replay_actors": replay_actors, "replay_resources": replay_resources}
            stage_args = StageArgs(cfg, metrics, lineage, pool, resources, out_dir, allow_weak_sandbox, keys_dir,
                                   replay_resources, elastic=sum(1 for n in ray.nodes() if n["Alive"]) > 1)
            # Work is committed in units (earlier rows, then one per window of read tasks), each
            # written to a temporary folder and renamed when complete: a killed run resumes after
            # its last complete unit, and no row is written twice.
            units = Units(staging)
            if previous_shards is not None and first is None:  # unchanged settings: earlier rows as they are
                units.commit("0-carried", lambda d: carry_over(previous_shards, d, superseded))
            elif previous_shards is not None:  # recomputed from the first changed stage on
                def recompute_unit(dest: Path) -> None:
                    shutil.rmtree(staging / PREVIOUS_ROWS, ignore_errors=True)
                    carry_over(previous_shards, staging / PREVIOUS_ROWS, superseded)
                    recompute_previous(staging / PREVIOUS_ROWS, dest, first, stage_args)

                units.commit("0-recomputed", recompute_unit)
            if keys_dir is not None:
                shutil.rmtree(keys_dir / PENDING_DIR, ignore_errors=True)  # keys of an unfinished window
            with progress_poller(progress, metrics, total=input_records - known,
                                 done=sum(units.rows(p.name) for p in units.root.glob("window-*"))):
                for window_no, window in enumerate(windows()):
                    name = f"window-{window_no:06d}"
                    window = pending_tasks(attach_verdicts(window, verdicts))
                    if units.done(name) or not window:
                        continue

                    def window_unit(dest: Path, window: list[ReadTask] = window, name: str = name) -> None:
                        ds = add_stages(ingest_dataset(window, cfg), "replay", stage_args)
                        ds.write_parquet(str(dest), partition_cols=list(S.PARTITION_COLUMNS))
                        if keys_dir is not None:  # the window's dedup keys belong to its unit
                            compact_keys(keys_dir, name)

                    units.commit(name, window_unit)
            carried, recomputed = units.rows("0-carried"), units.rows("0-recomputed")
            units.link_into(staging / SHARDS_DIR)
            timings["execute_s"] = round(time.perf_counter() - t, 3)

            t = time.perf_counter()
            dedup_counts.update(dedup_post_pass(staging, cfg, bench, lineage) if n_tasks else {})
            timings["best_of_n_s"] = round(time.perf_counter() - t, 3)

            # The manifest is read back from the staged shards it will be published with.
            for work in staging.iterdir():
                if work.name not in (SHARDS_DIR, MANIFEST) and work.name != UNITS_DIR:
                    shutil.rmtree(work) if work.is_dir() else work.unlink()
            ledger_rows = write_ledger(staging)
            manifest = build_manifest(
                out_dir=staging,
                run_id=run_id,
                cfg=cfg,
                inputs=[str(f) for f in files],
                # conservation over the whole OUT: earlier rows kept + every record of this run not already held
                input_records=carried + recomputed + input_records - known,
                timings={**timings, "stages": ray.get(metrics.get.remote())},
                counters=ray.get(metrics.get_counters.remote()),
                started=started,
            )
            manifest["sandbox"] = sandbox
            manifest["resources"] = {k: v for k, v in resources.items() if v is not None}
            # the Ray node of every replay actor (a cluster with sandbox nodes: only those)
            manifest["placement"] = ray.get(metrics.get_counters.remote()).get("placement", {})
            manifest["dedup"] = dedup_counts
            manifest["swept"] = [{"path": str(p), "bytes": n} for p, n in swept]
            manifest["stage_hashes"] = hashes
            manifest["run"] = {
                "input_records": input_records, "already_curated": known, "added": input_records - known,
                "superseded": len(superseded), "carried": carried,
                "recomputed": {"from": first, "rows": recomputed} if recomputed else None,
                "previous_run_id": (previous or {}).get("run_id"), "ledger_rows": ledger_rows,
            }
            write_manifest(staging, manifest)
            shutil.rmtree(staging / UNITS_DIR)  # the shards hold hard links of every unit's files
            publish(out_dir, staging, run_id)  # atomic: OUT shows the previous results until this instant
            (out_dir / RUNS_DIR).mkdir(exist_ok=True)  # history: one manifest per run (twi-curate report)
            write_manifest(out_dir / RUNS_DIR, manifest).rename(out_dir / RUNS_DIR / f"{run_id}.json")
            return manifest
        except KeyboardInterrupt:
            raise  # the staging stays: the same command resumes after the last complete unit
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            failure = write_failure(exc, staging)
            if failure is not None:
                raise failure from exc
            raise
