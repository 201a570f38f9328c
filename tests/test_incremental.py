"""Incremental runs over one OUT (pipeline.ledger), on real Ray with the bundled corpus:
only new records are replayed and judged, unchanged reruns do nothing again, a routing change
re-routes from stored scores, a forced recompute re-judges stored replays."""

from __future__ import annotations

import duckdb
import pytest

from pipeline.config import RunConfig
from pipeline.manifest import read_manifest
from pipeline.run import run_pipeline
from routing.route import decide
from schemas import sample as S

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def inputs(cache_root):
    """Two files beside the bundled corpus (its images are relative to it): the first 24 records,
    and the same 24 followed by the 24 others."""
    from pipeline.cli import DEFAULT_N, cache_dir

    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    lines = corpus.read_text().splitlines(keepends=True)
    assert len(lines) == 48
    first, both = corpus.with_name("first24.jsonl"), corpus.with_name("all48.jsonl")
    first.write_text("".join(lines[:24]))
    both.write_text("".join(lines))
    return first, both


def rows(out) -> dict[str, tuple]:
    con = duckdb.connect()
    got = con.execute(
        f"SELECT {S.SAMPLE_ID}, {S.ROUTE}, {S.score_column('visual_gain')}, {S.LINEAGE}.{S.LIN_RUN_ID} "
        f"FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert len(got) == len({r[0] for r in got}), "a sample_id appears twice in OUT"
    return {r[0]: r[1:] for r in got}


def stage_rows(manifest) -> dict[str, int]:
    return {k: v["rows"] for k, v in manifest["timings"]["stages"].items()}


def test_incremental_rerun_and_stage_aware_recompute(ray_local, inputs, tmp_path):
    first, both = inputs
    out = tmp_path / "out"
    m1 = run_pipeline([first], out, RunConfig(), quiet=True)
    assert m1["run"]["added"] == 24 and stage_rows(m1)["replay"] == 24
    before = rows(out)
    assert len(before) == 24

    # the same 24 + 24 new (another file, same content): only the new ones are replayed and judged
    m2 = run_pipeline([both], out, RunConfig(), quiet=True)
    assert m2["run"]["already_curated"] == 24 and m2["run"]["added"] == 24 and m2["run"]["carried"] == 24
    assert stage_rows(m2) == {"replay": 24, "judges": 24, "routing": 24}
    after = rows(out)
    assert len(after) == 48 and m2["input_records"] == 48 and m2["conservation"]["ok"]
    assert {sid: after[sid] for sid in before} == before  # earlier rows untouched (same run id too)
    assert read_manifest(out)["run_id"] == m2["run_id"] and (out / "runs" / f"{m1['run_id']}.json").is_file()

    # unchanged input, unchanged settings: nothing replayed, judged or routed again
    m3 = run_pipeline([both], out, RunConfig(), quiet=True)
    assert m3["run"]["already_curated"] == 48 and m3["run"]["added"] == 0
    assert stage_rows(m3) == {} and rows(out) == after and m3["conservation"]["ok"]
    assert m2["sandbox"] and m3["sandbox"] is None  # nothing to replay: no sandbox started either

    # a routing threshold changed: re-routed from the stored scores, no replay, no judging
    policy = RunConfig().routing.model_copy(update={"min_visual_gain": 0.9})
    cfg = RunConfig(routing=policy)
    m4 = run_pipeline([both], out, cfg, quiet=True)
    assert m4["run"]["recomputed"] == {"from": "routing", "rows": 48}
    assert stage_rows(m4) == {"routing": 48}
    rerouted = rows(out)
    assert set(rerouted) == set(after)
    assert any(after[s][0] == "twi" and rerouted[s][0] == "text" for s in after)  # the threshold bit
    con = duckdb.connect()
    stored = con.execute(f"SELECT * FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)")
    names = [d[0] for d in stored.description]
    for values in stored.fetchall():  # every route is the policy's decision on the stored scores
        row = dict(zip(names, values, strict=True))
        assert decide(row, policy).route == row[S.ROUTE], row[S.SAMPLE_ID]

    # forced: re-judge the stored replays (no replay), then route
    m5 = run_pipeline([both], out, cfg, quiet=True, recompute="judges")
    assert stage_rows(m5) == {"judges": 48, "routing": 48} and m5["conservation"]["ok"]
    final = rows(out)
    assert {s: v[:2] for s, v in final.items()} == {s: v[:2] for s, v in rerouted.items()}  # deterministic judges


def test_driver_killed_mid_run_resumes_exactly_once_with_the_same_routes(ray_local, inputs, tmp_path):
    """`twi-curate run` with small windows (6 records each) SIGKILLed once a window is committed;
    the same command then continues from there: every record once, the routes of an
    uninterrupted run, fewer records replayed than a full run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    first, _ = inputs
    config = tmp_path / "small-windows.yaml"
    config.write_text("ingest:\n  lines_per_task: 2\n  tasks_per_window: 3\n")
    reference = tmp_path / "reference"
    from pipeline.config import load_config

    run_pipeline([first], reference, load_config(config), quiet=True)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(first), "--out", str(out), "--config", str(config), "--quiet"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if [u for u in out.glob(".staging-*/units/window-*") if u.is_dir()]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)  # the driver, at an arbitrary point of the second window
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "shards").exists()  # nothing published yet
    done = len([u for u in out.glob(".staging-*/units/window-*") if u.is_dir()])
    assert 1 <= done < 4
    again = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    m = read_manifest(out)
    assert m["run"]["input_records"] == 24 and m["conservation"]["ok"]
    assert m["timings"]["stages"]["replay"]["rows"] <= 24 - 6 * done  # the committed windows were not redone
    got, want = rows(out), rows(reference)
    assert len(got) == 24 and {s: v[:2] for s, v in got.items()} == {s: v[:2] for s, v in want.items()}
    assert not list(out.glob(".staging-*"))


def test_pending_tasks_drops_only_tasks_whose_every_record_is_held():
    import json

    from pipeline.formats.sources import ReadTask
    from pipeline.ledger import pending_tasks
    from pipeline.stages.ingest import KNOWN

    known = {KNOWN: True}
    held = ReadTask("a.jsonl", 0, 0, 2, flags=json.dumps({"0": known, "1": known}))
    half = ReadTask("a.jsonl", 10, 2, 2, flags=json.dumps({"2": known}))
    dup = ReadTask("a.jsonl", 20, 4, 2, flags=json.dumps({"4": {S.DUPLICATE_OF: "x"}, "5": known}))
    fresh = ReadTask("a.jsonl", 30, 6, 2)
    assert pending_tasks([held, half, dup, fresh]) == [half, dup, fresh]
    assert pending_tasks([held]) == []
