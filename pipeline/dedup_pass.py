"""The run's passes before and after the curation stages (the keys and verdicts: pipeline.stages.dedup).

Before (:func:`pre_pass`): what OUT holds (pipeline.ledger) and, in the light pass of
:func:`dedup_verdicts`, the exact duplicates and the records OUT already holds, so they are
neither replayed nor judged. After (:func:`dedup_post_pass`): benchmark-contaminated records are
rejected and the best of N rollouts kept, on the staged shards, from the keys the judge stage
wrote during the main pass.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray

from pipeline.config import RunConfig
from pipeline.ledger import first_changed_stage, known_and_superseded, stage_hashes
from pipeline.ray_plan import TASK_CPUS, task_concurrency
from pipeline.run_state import Run
from pipeline.stage import Resources, add_stage
from pipeline.stages.best_of_n import apply_contamination, select_best
from pipeline.stages.dedup import GROUPS_FILE, KEYS_DIR, KeysStage, find_verdicts, key_files, post_verdicts
from pipeline.stages.ingest import ReadTask, task_items
from pipeline.tools.shards import SHARDS_DIR
from schemas import sample as S

KEY_TASKS_PER_BATCH = 16  # the key pass has no replay behind it: bigger batches, fewer Ray tasks
# Up to this many input records the pre-pass reads them in the driver, beside the sandbox check
# and Ray start, instead of in Ray Data tasks. Measured on 480 records at 2 CPUs: in the driver
# ~2 ms a record (parse and sha256); through Ray Data 5.1 s of wall and 8.4 s of CPU, of which
# 1.0 s is the work and the rest starting its first task workers and Ray Data's own actors (1.1 s
# once they are warm). The break-even on 2 CPUs is a few thousand records; beyond, the records are
# read in parallel.
DRIVER_KEY_RECORDS = 2_000


def post_keys_needed(cfg: RunConfig, benchmark: list | None) -> bool:
    """The main pass writes image keys for the post-pass: best-of-N groups, benchmark overlap."""
    return cfg.dedup.best_of_n is not None or bool(benchmark)


def keys_in_driver(run: Run) -> bool:
    """The pre-pass of a small input reads it in the driver (``DRIVER_KEY_RECORDS``), so it needs
    no Ray and can run beside the sandbox check and Ray start (pipeline.run)."""
    return run.input_records <= DRIVER_KEY_RECORDS


def pre_pass(run: Run, benchmark: list | None, recompute: str | None) -> None:
    """Before anything is replayed: what OUT holds (pipeline.ledger: records skipped, earlier rows
    carried over or recomputed from ``run.first``, the first stage whose settings changed or
    ``recompute``) and the exact duplicates (:func:`dedup_verdicts`, in the driver for a small
    input: :func:`keys_in_driver`)."""
    run.hashes = stage_hashes(run.cfg)
    if run.previous is not None and "stage_hashes" not in run.previous:
        run.previous = None  # written before the ledger: replaced by this run's rows
    run.first = first_changed_stage(run.previous["stage_hashes"] if run.previous else None, run.hashes, recompute)
    with run.timed("dedup_s"):
        if run.n_tasks:
            previous_shards = run.out_dir / SHARDS_DIR if run.previous is not None else None
            run.verdicts, run.dedup_counts, run.superseded = dedup_verdicts(
                run.windows(), run.cfg, benchmark, run.staging, previous_shards, in_driver=keys_in_driver(run))
    run.known = run.dedup_counts.pop("already_curated", 0)


def dedup_verdicts(
    windows: Iterable[list[ReadTask]], cfg: RunConfig, benchmark: list | None, work_dir: Path,
    previous_shards: Path | None = None, in_driver: bool = False,
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, int], set[tuple[str, int]]]:
    """The light pre-pass (exact duplicates, and records OUT already holds, so they are neither
    replayed nor judged): Ray Data (or, ``in_driver``, this process: no Ray needed) parses every
    record window by window (pipeline.stages.dedup.KeysStage), decoding no image, and appends its light key (sample_id, file, index, question and
    image-bytes hashes) to ``work_dir/prekeys``; DuckDB finds the duplicates (pipeline.stages.dedup) and,
    with ``previous_shards``, the records already curated and the earlier rows this input replaces
    (pipeline.ledger). Returns the verdicts of the flagged records only, counts for the manifest
    and the superseded (file, index). Groups and contamination come after the main pass
    (:func:`dedup_post_pass`)."""
    if not cfg.dedup.exact and previous_shards is None:
        return {}, {}, set()
    keys_dir = work_dir / "prekeys"
    shutil.rmtree(keys_dir, ignore_errors=True)  # a resumed run's pre-pass starts afresh
    for k, tasks in enumerate(windows):
        if in_driver:
            keys = KeysStage(cfg=cfg.ingest, resources=Resources(0.0))
            keys_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(keys.to_table(keys.process(task_items(tasks))), keys_dir / f"window-{k:06d}.parquet")
            continue
        blocks = max(-(-len(tasks) // KEY_TASKS_PER_BATCH), min(len(tasks), 4 * int(ray.cluster_resources().get("CPU", 1))))
        ds = ray.data.from_items(task_items(tasks), override_num_blocks=blocks)
        keys = KeysStage(cfg=cfg.ingest, resources=Resources(TASK_CPUS), batch_size=-(-len(tasks) // blocks),
                         workers=task_concurrency())
        add_stage(ds, keys).write_parquet(str(keys_dir))
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
    (pipeline.stages.dedup.post_verdicts over the keys the main pass's judge stage wrote, then
    pipeline.stages.best_of_n). Counts for the manifest."""
    if not post_keys_needed(cfg, benchmark):
        return {}
    groups = staging / GROUPS_FILE if cfg.dedup.best_of_n is not None else None
    contaminated = post_verdicts(key_files(staging / KEYS_DIR), cfg.dedup, benchmark, staging, groups_path=groups)
    counts = {"contaminated": apply_contamination(staging / SHARDS_DIR, contaminated, cfg.routing, lineage, staging)}
    counts.update(best_of_n(staging, cfg, lineage))
    return counts


def best_of_n(staging: Path, cfg: RunConfig, lineage: dict[str, Any]) -> dict[str, int]:
    """After the main pass: keep the best ``dedup.best_of_n`` rollouts of each (image, question)
    group in the staged shards, reject the others (pipeline.stages.best_of_n). Counts for the manifest."""
    groups = staging / GROUPS_FILE
    if cfg.dedup.best_of_n is None or not groups.is_file():
        return {}
    counts = select_best(staging / SHARDS_DIR, groups, cfg.dedup.best_of_n, cfg.routing, lineage, staging)
    return {f"best_of_n_{k}": v for k, v in counts.items()}

