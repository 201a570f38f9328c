"""One run into OUT, as pipeline.run's phases fill it in: the staging folder it works in (new, or
the one a killed run with the same inputs and settings left), its plan of read tasks, what OUT
held before, the counts and timings of each phase; and the last phase, the manifest and the
atomic publish.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.ledger import write_ledger
from pipeline.manifest import MANIFEST, build_manifest, read_manifest, write_manifest
from pipeline.publish import (
    RESUME_FILE,
    STAGING_PREFIX,
    UNITS_DIR,
    find_resumable,
    has_results,
    publish,
    resume_fingerprint,
    sweep_leftovers,
    write_json_atomic,
)
from pipeline.stages.ingest import ReadTask, iter_read_tasks, read_plan, write_plan
from pipeline.tools.shards import SHARDS_DIR
from schemas import sample as S

PLAN_FILE = "plan.jsonl"
RUNS_DIR = "runs"  # OUT/runs/<run_id>.json: the manifest of every run


@dataclass
class Run:
    """What the phases of one run share (pipeline.run.run_pipeline)."""

    out_dir: Path
    cfg: RunConfig
    files: list[Path]
    started: float
    run_id: str
    staging: Path = Path()
    lineage: dict[str, Any] = field(default_factory=dict)
    previous: dict[str, Any] | None = None  # OUT's manifest, when it has results
    resumed: bool = False
    fingerprint: str = ""
    swept: list[tuple[Path, int]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    input_records: int = 0
    n_tasks: int = 0
    sandbox: dict[str, Any] | None = None  # the sandbox check, once made (pipeline.stages.replay.ensure_sandbox_level)
    hashes: dict[str, str] = field(default_factory=dict)  # this run's stage settings (pipeline.ledger)
    first: str | None = None  # the first stage whose settings changed: earlier rows recomputed from there
    verdicts: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # the pre-pass's
    dedup_counts: dict[str, int] = field(default_factory=dict)
    superseded: set[tuple[str, int]] = field(default_factory=set)
    known: int = 0  # input records OUT holds already
    carried: int = 0
    recomputed: int = 0

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """``timings[key]``: the seconds the block took."""
        t = time.perf_counter()
        yield
        self.timings[key] = round(time.perf_counter() - t, 3)

    def windows(self) -> Iterator[list[ReadTask]]:
        """The plan's read tasks, ``ingest.tasks_per_window`` at a time."""
        return read_plan(self.staging / PLAN_FILE, self.cfg.ingest.tasks_per_window)


def open_run(files: list[Path], out_dir: Path, cfg: RunConfig) -> Run:
    """A new run (its id from the start time); OUT is created if needed."""
    started = time.time()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + uuid.uuid4().hex[:8]
    return Run(Path(out_dir), cfg, files, started, run_id)


def open_staging(run: Run, limit: int | None, format: str | None, benchmark: Path | None,
                 recompute: str | None) -> None:
    """Under OUT's lock: a run killed or interrupted with the same inputs, settings and OUT state
    left its staging: continue it (its finished units are kept, and its run id); any other
    leftover is swept (never read, never left to fill a disk)."""
    run.previous = read_manifest(run.out_dir) if has_results(run.out_dir) else None
    run.fingerprint = resume_fingerprint(run.files, run.cfg, limit, format, benchmark, recompute, run.previous)
    resumed = find_resumable(run.out_dir, run.fingerprint)
    if resumed is not None:
        run.run_id, run.resumed = resumed.name.removeprefix(STAGING_PREFIX), True
    run.staging = run.out_dir / f"{STAGING_PREFIX}{run.run_id}"
    run.lineage = {S.LIN_PIPELINE_VERSION: __version__, S.LIN_CONFIG_HASH: run.cfg.config_hash(),
                   S.LIN_RUN_ID: run.run_id}
    run.swept = sweep_leftovers(run.out_dir, keep=resumed)


def plan_run(run: Run, limit: int | None, format: str | None) -> None:
    """The read tasks streamed to the plan file (a resumed run's is there already): the driver's
    memory does not grow with the corpus."""
    with run.timed("plan_s"):
        if run.resumed:
            resume = json.loads((run.staging / RESUME_FILE).read_text())
            run.input_records, run.n_tasks = resume["records"], resume["tasks"]
        else:
            tasks = iter_read_tasks(run.files, run.cfg.ingest.lines_per_task, limit, format)
            run.input_records, run.n_tasks = write_plan(tasks, run.staging / PLAN_FILE)


def mark_resumable(run: Run) -> None:
    """The plan is complete: from here on, a killed run can be continued (pipeline.publish)."""
    if not run.resumed:
        write_json_atomic(run.staging / RESUME_FILE,
                          {"fingerprint": run.fingerprint, "records": run.input_records, "tasks": run.n_tasks})


def publish_run(run: Run, metrics: Any, resources: dict[str, Any]) -> dict[str, Any]:
    """The manifest, read back from the staged shards it is published with; then the atomic
    publish (OUT shows the previous results until that instant) and the run's entry in
    OUT/runs/. Returns the manifest."""
    staging = run.staging
    for work in staging.iterdir():
        if work.name not in (SHARDS_DIR, MANIFEST) and work.name != UNITS_DIR:
            shutil.rmtree(work) if work.is_dir() else work.unlink()
    ledger_rows = write_ledger(staging)
    manifest = build_manifest(
        out_dir=staging,
        run_id=run.run_id,
        cfg=run.cfg,
        inputs=[str(f) for f in run.files],
        # conservation over the whole OUT: earlier rows kept + every record of this run not already held
        input_records=run.carried + run.recomputed + run.input_records - run.known,
        timings={**run.timings, "stages": ray.get(metrics.get.remote())},
        counters=ray.get(metrics.get_counters.remote()),
        started=run.started,
    )
    manifest["sandbox"] = run.sandbox
    manifest["resources"] = {k: v for k, v in resources.items() if v is not None}
    # the Ray node of every replay actor (a cluster with sandbox nodes: only those)
    manifest["placement"] = ray.get(metrics.get_counters.remote()).get("placement", {})
    manifest["dedup"] = run.dedup_counts
    manifest["swept"] = [{"path": str(p), "bytes": n} for p, n in run.swept]
    manifest["stage_hashes"] = run.hashes
    manifest["run"] = {
        "input_records": run.input_records, "already_curated": run.known, "added": run.input_records - run.known,
        "superseded": len(run.superseded), "carried": run.carried,
        "recomputed": {"from": run.first, "rows": run.recomputed} if run.recomputed else None,
        "previous_run_id": (run.previous or {}).get("run_id"), "ledger_rows": ledger_rows,
    }
    write_manifest(staging, manifest)
    shutil.rmtree(staging / UNITS_DIR)  # the shards hold hard links of every unit's files
    publish(run.out_dir, staging, run.run_id)
    (run.out_dir / RUNS_DIR).mkdir(exist_ok=True)  # history: one manifest per run (twi-curate report)
    write_manifest(run.out_dir / RUNS_DIR, manifest).rename(run.out_dir / RUNS_DIR / f"{run.run_id}.json")
    return manifest
