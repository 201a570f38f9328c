"""Executing a run (pipeline.run, step 3): the curation stages streamed through Ray Data and
committed in units, each written to a temporary folder and renamed when complete
(pipeline.publish.Units): a killed run resumes after its last complete unit, and no row is
written twice. The first unit holds OUT's earlier rows, carried over as they are or recomputed
from the first stage whose settings changed (pipeline.ledger); then one unit per window of read
tasks.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipeline.ledger import carry_over, pending_tasks
from pipeline.progress import progress_poller
from pipeline.publish import Units
from pipeline.ray_plan import TASK_CPUS, StageArgs
from pipeline.run_state import Run
from pipeline.stage import Resources, Rows, Stage, add_stage
from pipeline.stages.dedup import PENDING_DIR, attach_verdicts, compact_keys
from pipeline.stages.ingest import ReadTask, task_items
from pipeline.tools.shards import SHARDS_DIR, read_shard_file
from schemas import sample as S

PREVIOUS_ROWS = "previous-rows"  # earlier rows to recompute (work dir)
# Rows Ray Data gathers before a write task writes them (one file per partition it holds): written
# as they came out of routing, every replay batch became files of one or two rows (480 rows: 480
# files), which every later reader of OUT (manifest, best-of-N, DuckDB, exports) opens one by one.
# ~0.6 MB a row on the sample corpus: ~75 MB per write; the last rows of a window are written as
# they are.
ROWS_PER_WRITE = 128
Stages = Callable[[str, StageArgs], list[Stage]]  # pipeline.run.curation_stages: (first stage, args) -> stages


def through(ds: ray.data.Dataset, stages: list[Stage], metrics: Any) -> ray.data.Dataset:
    """``ds`` through ``stages``, in order (pipeline.stage.add_stage)."""
    for stage in stages:
        ds = add_stage(ds, stage, metrics)
    return ds


@dataclass(kw_only=True)
class ShardReadStage(Stage):
    """The source of a recompute: each row names a shard file (``path``) under ``base``; the
    batch becomes that file's rows as canonical columns, with the hive partition columns (route,
    discipline) restored from its path. Returned as the Arrow table it was read as: the rows are
    not turned into Python objects and back."""

    name = "read_shards"
    recorded = False  # rows read, not curated: the stages after it record the recompute

    def process(self, rows: Rows) -> pa.Table:
        return pa.concat_tables([read_shard_file(Path(r["path"]), Path(r["base"])) for r in rows])


def write_shards(ds: ray.data.Dataset, dest: Path) -> None:
    """``ds`` as Parquet shards under ``dest``, hive-partitioned by route and discipline: each write
    task gathers at least :data:`ROWS_PER_WRITE` rows (a window's last one the rest) and writes one
    file per partition among them. (Gathered by a batch size, not by ``min_rows_per_file``, which
    Ray deprecates together with ``partition_cols``.)"""
    # a lambda travels by value: a write worker does not import this package (and the judges'
    # registry with it, ~1 s of CPU per worker) to run an identity
    gathered = ds.map_batches(lambda batch: batch, batch_size=ROWS_PER_WRITE, batch_format="pyarrow", num_cpus=TASK_CPUS)
    # Ray's default request (1 CPU) could not fit beside the actor pools
    gathered.write_parquet(str(dest), partition_cols=list(S.PARTITION_COLUMNS), ray_remote_args={"num_cpus": TASK_CPUS})


def recompute_previous(previous_rows: Path, dest: Path, first: str, a: StageArgs, stages: Stages) -> int:
    """Earlier rows (hard links of the previous version's shards under ``previous_rows``) through
    the stages from ``first`` on, into ``dest``. Returns the rows recomputed."""
    files = sorted(str(p) for p in previous_rows.rglob("*.parquet"))
    if not files:
        return 0
    # one block per shard file, read by a task (Ray's read_parquet needs fsspec's HTTP extras here)
    ds = ray.data.from_items([{"path": f, "base": str(previous_rows)} for f in files], override_num_blocks=len(files))
    ds = add_stage(ds, ShardReadStage(resources=Resources(TASK_CPUS), batch_size=1), a.metrics)
    # their dedup keys are not written again: best-of-N and contamination were settled when they were added
    ds = through(ds, stages(first, replace(a, keys_dir=None)), a.metrics)
    write_shards(ds, dest)
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    shutil.rmtree(previous_rows)
    return n


def execute_units(run: Run, a: StageArgs, stages: Stages, progress: Callable[[dict[str, Any]], None] | None) -> None:
    """Every unit of the run not committed yet (see the module docstring), then the units' shard
    files linked into the staging's shards; ``progress`` is called while the windows run
    (pipeline.progress)."""
    units, previous_shards = Units(run.staging), run.out_dir / SHARDS_DIR
    if run.previous is not None and run.first is None:  # unchanged settings: earlier rows as they are
        units.commit("0-carried", lambda dest: carry_over(previous_shards, dest, run.superseded))
    elif run.previous is not None:  # recomputed from the first changed stage on
        def recompute_unit(dest: Path) -> None:
            shutil.rmtree(run.staging / PREVIOUS_ROWS, ignore_errors=True)
            carry_over(previous_shards, run.staging / PREVIOUS_ROWS, run.superseded)
            recompute_previous(run.staging / PREVIOUS_ROWS, dest, run.first, a, stages)

        units.commit("0-recomputed", recompute_unit)
    if a.keys_dir is not None:
        shutil.rmtree(a.keys_dir / PENDING_DIR, ignore_errors=True)  # keys of an unfinished window
    with progress_poller(progress, a.metrics, total=run.input_records - run.known,
                         done=sum(units.rows(p.name) for p in units.root.glob("window-*"))):
        for window_no, window in enumerate(run.windows()):
            name = f"window-{window_no:06d}"
            window = pending_tasks(attach_verdicts(window, run.verdicts))
            if units.done(name) or not window:
                continue

            def window_unit(dest: Path, window: list[ReadTask] = window, name: str = name) -> None:
                # one block per read task (so replay spreads over actors), through every stage
                ds = ray.data.from_items(task_items(window), override_num_blocks=len(window))
                write_shards(through(ds, stages("ingest", a), a.metrics), dest)
                if a.keys_dir is not None:  # the window's dedup keys belong to its unit
                    compact_keys(a.keys_dir, name)

            units.commit(name, window_unit)
    run.carried, run.recomputed = units.rows("0-carried"), units.rows("0-recomputed")
    units.link_into(run.staging / SHARDS_DIR)
