"""One writer per OUT and atomic publishing (pipeline.publish), with real runs, real processes
killed with real signals, and a real full disk (a small tmpfs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.manifest import read_manifest, shard_counts
from pipeline.publish import (
    CURRENT,
    LOCK_FILE,
    VERSIONS_DIR,
    OutLock,
    OutLockedError,
    publish,
    sweep_leftovers,
)
from pipeline.tools.shards import SHARDS_DIR, shard_files

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipeline.cli"]
N = 6


@pytest.fixture(scope="module")
def corpus(cache_root):
    from pipeline.cli import DEFAULT_N, cache_dir

    src = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    return src


def cli(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env, **kw)


def snapshot(out: Path) -> dict:
    """What a reader of OUT sees: the manifest and the rows of the shards it points at."""
    m = read_manifest(out)
    counts = shard_counts(out)
    return {"run_id": m["run_id"], "routes": m["routes"], "rows": counts["output_records"],
            "files": sorted(str(p.relative_to(out / SHARDS_DIR)) for p in shard_files(out))}


def consistent(out: Path) -> bool:
    """OUT's manifest describes exactly the shards OUT shows."""
    m = read_manifest(out)
    return m["routes"] == shard_counts(out)["routes"] and m["output_records"] == shard_counts(out)["output_records"]


@pytest.fixture(scope="module")
def good_out(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pub") / "out"
    r = cli("run", str(corpus), "--limit", str(N), "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / CURRENT).is_symlink() and (out / SHARDS_DIR).is_symlink()
    assert consistent(out) and read_manifest(out)["input_records"] == N
    return out


def test_empty_input_leaves_good_results_untouched(good_out, tmp_path):
    before = snapshot(good_out)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    r = cli("run", str(empty), "--out", str(good_out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "0 input records" in r.stdout and "left untouched" in r.stdout
    assert snapshot(good_out) == before
    assert not list(good_out.glob(".staging-*"))


def test_second_run_into_an_out_in_use_fails_at_once_with_the_holder(good_out, corpus):
    before = snapshot(good_out)
    first = subprocess.Popen([*CLI, "run", str(corpus), "--limit", "4", "--out", str(good_out), "--quiet"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    try:
        holder = {}
        for _ in range(600):  # wait until the first run holds the lock
            text = (good_out / LOCK_FILE).read_text() if (good_out / LOCK_FILE).exists() else ""
            holder = json.loads(text) if text.strip() else {}
            if holder.get("pid") == first.pid:
                break
            time.sleep(0.1)
        assert holder.get("pid") == first.pid
        start = time.monotonic()
        second = cli("run", str(corpus), "--limit", "4", "--out", str(good_out), "--quiet", timeout=120)
        assert second.returncode == 3, second.stderr
        assert time.monotonic() - start < 60  # at once: no Ray started, nothing replayed
        assert holder["run_id"] in second.stderr and "only one run" in second.stderr
        # the first run is killed: the kernel drops its lock, OUT still shows the earlier results
        first.send_signal(signal.SIGKILL)
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
    assert snapshot(good_out) == before and consistent(good_out)
    with OutLock(good_out, "probe"):
        removed = sweep_leftovers(good_out)
    assert all(".staging-" in str(p) or VERSIONS_DIR in str(p) for p, _ in removed)
    assert not list(good_out.glob(".staging-*"))


def test_lock_is_released_when_its_holder_is_killed(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipeline.publish import OutLock\n"
        f"with OutLock({str(out)!r}, 'holder'):\n    print('held', flush=True); time.sleep(600)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutLockedError, match="run holder"), OutLock(out, "second"):
            pass
        holder.kill()
        holder.wait(30)
        with OutLock(out, "third"):  # not stuck after a SIGKILL
            assert json.loads((out / LOCK_FILE).read_text())["run_id"] == "third"
    finally:
        holder.kill()


def _stage(good_out: Path, root: Path, i: int, keep: int) -> Path:
    """A staging folder holding ``keep`` of good_out's shard files and the manifest counting them."""
    from pipeline.manifest import write_manifest

    stage = root / f".staging-v{i:03d}"
    src = good_out / SHARDS_DIR
    files = shard_files(good_out)[:keep]
    for f in files:
        dst = stage / SHARDS_DIR / f.relative_to(src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    m = read_manifest(good_out)
    m.update(shard_counts(stage), run_id=f"v{i:03d}")
    write_manifest(stage, m)
    return stage


def test_driver_killed_while_publishing_leaves_one_consistent_state(good_out, tmp_path):
    """A process publishes version after version without pause (each with a different number of
    shard files) and is SIGKILLed at random instants: after every kill OUT shows one complete
    version whose manifest describes exactly its shards, and the next publish works."""
    out, templates = tmp_path / "out", tmp_path / "templates"
    out.mkdir()
    n_files = len(shard_files(good_out))
    assert n_files >= 2
    for k in range(n_files):
        _stage(good_out, templates, k, k + 1)
    publisher = (
        "import itertools, shutil, sys, time; from pathlib import Path; from pipeline.publish import publish\n"
        "out, templates = Path(sys.argv[1]), sorted(Path(sys.argv[2]).iterdir())\n"
        "print('ready', flush=True)\n"
        "for i in itertools.count():\n"
        "    run_id = f'{time.time_ns()}-{i}'\n"
        "    stage = out / f'.staging-{run_id}'\n"
        "    shutil.copytree(templates[i % len(templates)], stage)\n"
        "    publish(out, stage, run_id)\n"
    )
    rng = __import__("random").Random(7)
    published = 0
    for round_no in range(12):
        proc = subprocess.Popen([sys.executable, "-c", publisher, str(out), str(templates)], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        if (out / SHARDS_DIR).exists():
            published += 1
            assert consistent(out), round_no
        with OutLock(out, "next"):
            sweep_leftovers(out)
        assert not list(out.glob(".staging-*"))
    assert published >= 10  # the kills landed after a first publish: the check was exercised
    stage = _stage(good_out, out, 999, n_files)
    publish(out, stage, "v999")
    assert read_manifest(out)["run_id"] == "v999" and consistent(out)
    assert len(list((out / VERSIONS_DIR).iterdir())) <= 2  # older versions swept


def test_legacy_layout_is_adopted(good_out, tmp_path):
    out = tmp_path / "legacy"
    out.mkdir()
    shutil.copytree(good_out / SHARDS_DIR, out / SHARDS_DIR)  # a pre-versioning OUT: real folder and file
    shutil.copyfile(good_out / "manifest.json", out / "manifest.json")
    before = snapshot(out)
    publish(out, _stage(good_out, out, 1, 1), "v001")
    assert (out / SHARDS_DIR).is_symlink() and snapshot(out)["run_id"] == "v001" and consistent(out)
    assert [p.name for p in (out / VERSIONS_DIR).iterdir() if p.name.startswith("legacy-")]
    assert before["rows"] >= snapshot(out)["rows"]


def test_interrupted_run_says_how_to_resume_and_leaves_out_unchanged(good_out, corpus):
    before = snapshot(good_out)
    # the whole corpus (48 records): a 12-record run can finish within the 3 s below on a fast
    # start (it did once the sandbox started faster), and then there is nothing to interrupt
    proc = subprocess.Popen([*CLI, "run", str(corpus), "--out", str(good_out), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    for _ in range(600):  # interrupt once the run is under way (it holds the lock and stages)
        if list(good_out.glob(".staging-*")):
            break
        time.sleep(0.1)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert snapshot(good_out) == before
    assert len(list(good_out.glob(".staging-*"))) == 1  # kept for the rerun to resume
    again = cli("run", str(corpus), "--out", str(good_out), "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    m = read_manifest(good_out)
    assert m["run"]["input_records"] == 48 and m["conservation"]["ok"] and not list(good_out.glob(".staging-*"))


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk test: {r.stderr}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_gives_one_line_keeps_previous_results_and_next_run_works(corpus, small_disk):
    out = small_disk / "out"
    first = cli("run", str(corpus), "--limit", "3", "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(out)
    free = shutil.disk_usage(small_disk).free
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # leave too little room for the next run's shards
        fh.write(b"\0" * max(0, free - 256 * 1024))
    second = cli("run", str(corpus), "--limit", str(N), "--out", str(out), "--quiet")
    assert second.returncode == 4, (second.returncode, second.stderr[-3000:])
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], second.stderr[-3000:]
    assert "no space left on device" in errors[0] and str(out) in errors[0]
    assert "Traceback" not in second.stderr
    assert snapshot(out) == before and consistent(out)
    assert not list(out.glob(".staging-*"))  # nothing left behind to fill the disk
    filler.unlink()
    third = cli("run", str(corpus), "--limit", str(N), "--out", str(out), "--quiet")
    assert third.returncode == 0, third.stderr[-3000:]
    assert read_manifest(out)["input_records"] == N and consistent(out)
