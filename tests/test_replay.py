"""The replay stage on real sandboxes: fidelity to the record, statuses, a broken sandbox."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from pipeline.sandbox import ProcessSandbox
from pipeline.stages.replay import SandboxBrokenError, check_sandbox_works, replay_row, summarize_status
from schemas import sample as S
from tests.images import png

pytestmark = pytest.mark.timeout(120)
UID = 60000 + (os.getpid() + 17) % 5000


@pytest.fixture(scope="module")
def sandbox():
    box = ProcessSandbox(uid=UID, gid=UID)
    yield box
    box.close()


def _row(code: str, obs_text: str | None, obs_images: list[bytes]):
    img = png(np.tile(np.arange(200, dtype=np.uint8), (120, 1)))
    row = S.empty_row()
    row.update({
        S.SAMPLE_ID: "x",
        S.IMAGES: [S.image_record("in.png", img, 200, 120)],
        S.TURNS: [
            {S.TURN_REASONING: "crop", S.TURN_CODE: code, S.TURN_OBS_TEXT: obs_text,
             S.TURN_OBS_IMAGES: [S.image_record(f"o{i}.png", b, 1, 1) for i, b in enumerate(obs_images)]},
            {S.TURN_REASONING: "done", S.TURN_CODE: None, S.TURN_OBS_TEXT: None, S.TURN_OBS_IMAGES: []},
        ],
    })
    return row


CODE = "c = image.crop((10, 10, 60, 40)).resize((100, 60))\nc.save('zoom.png')\nprint('mean', round(float(__import__('numpy').asarray(c).mean()), 1))"


def test_faithful_record_has_fidelity_one_and_images(sandbox):
    first = replay_row(_row(CODE, None, []), sandbox)
    cell = first[S.REPLAY][0]
    assert cell[S.CELL_STATUS] == "ok" and len(cell[S.CELL_IMAGES]) == 1
    produced = cell[S.CELL_IMAGES][0]
    assert (produced[S.IMG_WIDTH], produced[S.IMG_HEIGHT]) == (100, 60)
    row = replay_row(_row(CODE, cell[S.CELL_STDOUT], [produced[S.IMG_BYTES]]), sandbox)
    assert row[S.REPLAY][0][S.CELL_FIDELITY] == 1.0
    assert row[S.REPLAY_STATUS] == "ok"
    assert row[S.REPLAY][0][S.CELL_TURN] == 0


def test_fabricated_numbers_or_image_lower_fidelity(sandbox):
    truth = replay_row(_row(CODE, None, []), sandbox)[S.REPLAY][0]
    lie_text = replay_row(_row(CODE, "mean 7.0", [truth[S.CELL_IMAGES][0][S.IMG_BYTES]]), sandbox)
    assert lie_text[S.REPLAY][0][S.CELL_FIDELITY] == 0.0
    other = png(np.random.default_rng(0).integers(0, 255, (60, 100), dtype=np.uint8))
    lie_image = replay_row(_row(CODE, truth[S.CELL_STDOUT], [other]), sandbox)
    assert lie_image[S.REPLAY][0][S.CELL_FIDELITY] < 0.5


def test_status_summary_and_invalid_rows(sandbox):
    assert summarize_status([]) == "no_code"
    assert summarize_status(["ok", "error", "forbidden"]) == "forbidden"
    assert summarize_status(["ok", "timeout", "skipped"]) == "timeout"
    row = S.empty_row()
    row[S.INPUT_ERROR] = "malformed_json"
    assert replay_row(row, sandbox)[S.REPLAY_STATUS] == "not_run"
    bad = replay_row(_row("raise ValueError('boom')", None, []), sandbox)
    assert bad[S.REPLAY_STATUS] == "error" and "boom" in bad[S.REPLAY][0][S.CELL_ERROR]


def test_broken_sandbox_stops_the_run_with_advice(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    box = ProcessSandbox(python=str(fake), uid=UID, gid=UID, allow_weaker=True)
    try:
        with pytest.raises(SandboxBrokenError, match="cannot run a trivial cell"):
            check_sandbox_works(box)
    finally:
        box.close()


@pytest.mark.parametrize("kind", ["process", "zygote"])
def test_sandbox_cpu_meter_counts_the_cells_work(kind):
    """The replay stage's cpu_s (manifest timings.stages) includes the CPU the cells used in the
    sandbox's own processes, for both sandbox kinds (the zygote's share shows once it has reaped
    the trajectory, at its next fork: a run's total lags by at most the last trajectory); and it
    is a delta: a take() with nothing run since adds nothing."""
    from pipeline.sandbox import ZygoteSandbox
    from pipeline.stages.replay import SandboxCpuMeter

    box = ProcessSandbox(uid=UID, gid=UID) if kind == "process" else ZygoteSandbox(uid=UID, gid=UID)
    try:
        meter = SandboxCpuMeter(box)
        out = box.replay(["s = 0\nfor i in range(10_000_000):\n    s += i * i\nprint(s > 0)"], [])
        assert [o.status for o in out] == ["ok"] and out[0].stdout == "True\n"
        # the zygote reaps a finished trajectory (WNOHANG) when it forks the next one: its CPU is
        # counted then, once the trajectory's init has exited, which can lag its last reply
        # (~0.75 s of CPU in-process; a "pass" trajectory costs ~0.03 s, five of them < 0.4 s)
        used = 0.0
        for _ in range(5):
            time.sleep(0.2)
            assert [o.status for o in box.replay(["pass"], [])] == ["ok"]
            used += meter.take()
            if used >= 0.4:
                break
        assert used >= 0.4, f"a 10M-iteration loop used {used} CPU s according to the meter"
        assert meter.take() < 0.05  # nothing ran since: nothing is added
    finally:
        box.close()
