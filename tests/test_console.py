"""`twi-curate run`'s console (pipeline.cli.RunConsole): one progress display and the summary on
the terminal; Ray's warnings, progress and INFO lines, C++ core-worker lines and worker logs in
OUT/logs/run-<run_id>.log; `--verbose` puts them back on the console. Real runs in real processes,
with stdout+stderr redirected to a file (cron, `> log 2>&1`) and on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from pipeline.cli import progress_text

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipeline.cli"]
N = 6
MAX_LINES = 40
# lines only Ray prints (Ray Data's INFO and progress lines), never our console
RAY_MARKERS = ("Starting execution of Dataset", "logging_progress.py", "streaming_executor.py")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


@pytest.fixture(scope="module")
def corpus(cache_root):
    from pipeline.cli import DEFAULT_N, cache_dir

    return cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "RAY_ADDRESS"):
        env.pop(k, None)
    return env


def run_to_file(corpus: Path, out: Path, log: Path, *extra: str) -> tuple[int, str]:
    """`twi-curate run CORPUS --limit N --out OUT [extra]` with stdout and stderr in one file."""
    with open(log, "wb") as f:
        proc = subprocess.run([*CLI, "run", str(corpus), "--limit", str(N), "--out", str(out), *extra],
                              stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(),
                              timeout=600)
    return proc.returncode, log.read_text(errors="replace")


def run_on_terminal(corpus: Path, out: Path, timeout: float = 600) -> tuple[int, str]:
    """The same run on a real pseudo-terminal (120 x 40): what a user at a terminal sees."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([*CLI, "run", str(corpus), "--limit", str(N), "--out", str(out)],
                            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                            env={**_env(), "TERM": "xterm-256color"}, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not data:
                break
            chunks.append(data)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, b"".join(chunks).decode(errors="replace")


def manifest_run_id(out: Path) -> str:
    return json.loads((out / "manifest.json").read_text())["run_id"]


def check_quiet_console(text: str, out: Path) -> Path:
    """What a default run shows: few lines, a progress line, the summary, the log's path, no Ray line."""
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{text}"
    assert any(line.startswith("progress:") and "samples/s" in line for line in lines) or \
        "samples/s" in text, text
    assert f"{N}/{N} samples" in text, text
    assert "discipline" in text and "conservation: ok" in text, text
    for marker in (*RAY_MARKERS, "core_worker", "Token authentication", "WARNING authentication"):
        assert marker not in text, f"Ray's {marker!r} reached the console:\n{text}"
    found = re.search(r"Ray and worker log: (\S+\.log)", text)
    assert found, text
    log = Path(found.group(1))
    assert log == out / "logs" / f"run-{manifest_run_id(out)}.log"
    assert log.is_file()
    return log


def test_progress_text_stage_rate_eta():
    """The display's text: the first unfinished stage, done/total, samples/s and ETA."""
    stage, text = progress_text({"total": 48, "done": 12, "elapsed_s": 24.0,
                                 "stages": {"replay": 30, "judges": 20, "routing": 12}})
    assert stage == "replay"
    assert text.startswith("12/48 samples, 0.50 samples/s, ETA 1m12s, elapsed 24s")
    assert "(replay 30 judges 20 routing 12)" in text
    assert progress_text({"total": 48, "done": 0, "elapsed_s": 3.0, "stages": {}})[0] == "starting actors"
    # a resumed run: 40 routed by units committed before, 8 to go in this one
    stage, text = progress_text({"total": 48, "done": 46, "elapsed_s": 10.0,
                                 "stages": {"replay": 8, "judges": 8, "routing": 6}})
    assert stage == "routing" and text.startswith("46/48 samples, 0.60 samples/s")
    assert progress_text({"total": 6, "done": 6, "elapsed_s": 9.0,
                          "stages": {"replay": 6, "judges": 6, "routing": 6}})[0] == "writing"


def test_default_run_redirected_is_quiet_and_logs_ray(corpus, tmp_path):
    """`> log 2>&1` (cron): <= 40 lines with plain progress lines and the summary; Ray's lines
    (its INFO and progress lines, the core-worker error line, warnings) are in OUT/logs."""
    out = tmp_path / "out"
    rc, text = run_to_file(corpus, out, tmp_path / "console.log")
    assert rc == 0, text
    assert re.search(r"^progress: \S.* \| \d+/\d+ samples, [-0-9.]+ samples/s, ETA ", text, re.M), text
    log = check_quiet_console(text, out)
    ray_log = log.read_text(errors="replace")
    assert ray_log.startswith("twi-curate run, started ")
    for marker in RAY_MARKERS:
        assert marker in ray_log, f"{marker!r} missing from {log}:\n{ray_log[:3000]}"


def test_default_run_on_a_terminal(corpus, tmp_path):
    """On a real terminal: a live progress line (redrawn in place, not one line per update), the
    summary, the log's path; <= 40 lines in all."""
    out = tmp_path / "out"
    rc, raw = run_on_terminal(corpus, out)
    text = ANSI.sub("", raw).replace("\r\n", "\n")
    assert rc == 0, text
    assert raw.count("\n") <= MAX_LINES, f"{raw.count(chr(10))} lines:\n{text}"
    assert "\x1b[" in raw  # a live display (cursor moves), not plain lines
    assert "samples/s" in text and "ETA" in text, text
    log = check_quiet_console("\n".join(part.rsplit("\r", 1)[-1] for part in text.split("\n")), out)
    assert any(m in log.read_text(errors="replace") for m in RAY_MARKERS)


def test_verbose_puts_ray_output_on_the_console(corpus, tmp_path):
    """`--verbose`: Ray's own lines on the console, no log file and no display of ours."""
    out = tmp_path / "out"
    rc, text = run_to_file(corpus, out, tmp_path / "console.log", "--verbose")
    assert rc == 0, text
    assert all(m in text for m in RAY_MARKERS[:2]), text
    assert "Ray and worker log:" not in text and not (out / "logs").exists()
    assert "conservation: ok" in text


def test_run_under_clirunner_is_not_redirected(ray_local, corpus, tmp_path):
    """typer's CliRunner replaces sys.stdout (no file descriptor): nothing is redirected, the run
    works, the plain progress lines and the summary are in its output, no log file."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(corpus), "--limit", str(N), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "progress:" in result.output and "samples/s" in result.output
    assert f"{N}/{N} samples" in result.output and "conservation: ok" in result.output
    assert not (out / "logs").exists()
