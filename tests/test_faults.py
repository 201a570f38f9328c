"""Faults inside a run: a sandbox zygote and a replay actor (which also runs the metric judges on
the rows it replays) are SIGKILLed (real processes, found by their command lines) while
`twi-curate run` works; the run completes with every record once and the routes of an undisturbed
run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from pipeline.config import load_config
from pipeline.manifest import read_manifest
from pipeline.run import run_pipeline
from schemas import sample as S

pytestmark = pytest.mark.timeout(1500)
ROOT = Path(__file__).resolve().parents[1]


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.append((int(p), ppid, cmd))
    return out


def under(root: int, procs: list[tuple[int, int, str]]) -> set[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in procs:
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def routes(out: Path) -> dict[str, str]:
    got = duckdb.connect().execute(
        f"SELECT {S.SAMPLE_ID}, {S.ROUTE} FROM read_parquet('{out}/shards/**/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert len(got) == len({sid for sid, _ in got}), "a record appears twice"
    return dict(got)


REPLAY_ACTOR = "MapBatches(ingest+replay+judges+routing)"  # the replay actor's process name (pipeline.run.curation_stages)


def test_zygote_and_replay_judge_actor_killed_mid_run(ray_local, cache_root, tmp_path):
    from pipeline.cli import DEFAULT_N, cache_dir

    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    first = corpus.with_name("faults24.jsonl")
    first.write_text("".join(corpus.read_text().splitlines(keepends=True)[:24]))
    config = tmp_path / "windows.yaml"
    config.write_text("ingest:\n  lines_per_task: 2\n  tasks_per_window: 4\n")
    reference = tmp_path / "reference"
    run_pipeline([first], reference, load_config(config), quiet=True)

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(first), "--out", str(out), "--config", str(config), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    targets = [  # what to kill, in this order, each once the previous kill is done
        ("zygote", lambda pid, ppid, cmd, by_pid: "pipeline/sandbox/runner.py" in cmd
         and REPLAY_ACTOR in by_pid.get(ppid, "")),
        ("replay+judge actor", lambda pid, ppid, cmd, by_pid: cmd.startswith(f"ray::MapWorker({REPLAY_ACTOR})")),
    ]
    killed: list[str] = []
    deadline = time.monotonic() + 900
    try:
        while targets and proc.poll() is None and time.monotonic() < deadline:
            procs = processes()
            scope = under(proc.pid, procs)  # this run's: the driver started Ray (raylet -> workers -> zygotes)
            by_pid = {pid: cmd for pid, _, cmd in procs}
            name, match = targets[0]
            found = [pid for pid, ppid, cmd in procs if pid in scope and match(pid, ppid, cmd, by_pid)]
            # the zygote as soon as it serves; the actors once a window is committed (mid-run)
            if found and (name == "zygote" or any(u.is_dir() for u in out.glob(".staging-*/units/window-*"))):
                os.kill(found[0], signal.SIGKILL)
                killed.append(name)
                targets.pop(0)
                time.sleep(4)
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert killed, "nothing could be killed before the run ended"
    m = read_manifest(out)
    assert m["conservation"]["ok"] and m["input_records"] == 24
    assert routes(out) == routes(reference), f"killed: {killed}"
    print("killed mid-run:", killed)
