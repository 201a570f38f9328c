"""Replay: run every code cell of each trajectory in the sandbox and store what really happened.

One sandbox per Ray actor (expensive setup once, in ``__init__``). Per cell the replay keeps
status, stdout, error, duration, produced images and its fidelity to the recorded observation;
per sample ``replay_status`` sums it up:
  ``not_run`` (invalid input), ``no_code``, ``ok`` (every cell ok), or the worst cell status
  (``forbidden`` > ``memory`` > ``timeout`` > ``killed`` > ``error``).
"""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow as pa
from PIL import Image

from pipeline.config import ReplayConfig
from pipeline.fidelity import cell_fidelity
from pipeline.sandbox import InputImage
from pipeline.sandbox.levels import make_sandbox, sandbox_limits, sandbox_uid
from schemas import sample as S

STATUS_SEVERITY = ("forbidden", "memory", "timeout", "killed", "error")


class SandboxBrokenError(RuntimeError):
    """The sandbox cannot run even a trivial cell: an installation problem, not a sample's fault."""


def check_sandbox_works(sandbox: Any) -> None:
    """Replay a trivial trajectory; if that fails, stop the run instead of rejecting every sample."""
    out = sandbox.replay(["x = 41", "print(x + 1)"], [])
    if [o.status for o in out] != ["ok", "ok"] or out[1].stdout != "42\n":
        detail = "; ".join(f"{o.status}: {o.error.strip()[:400]}" for o in out if o.status != "ok")
        raise SandboxBrokenError(
            f"the replay sandbox cannot run a trivial cell ({detail or out[1].stdout!r}). "
            "Check that the libraries in pyproject.toml are installed in this interpreter and "
            "run `python -m pytest tests/test_sandbox.py` for details."
        )


def summarize_status(statuses: list[str]) -> str:
    if not statuses:
        return "no_code"
    for s in STATUS_SEVERITY:
        if s in statuses:
            return s
    return "ok" if all(s == "ok" for s in statuses) else "error"


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def replay_row(row: dict[str, Any], sandbox: Any) -> dict[str, Any]:
    """Fill REPLAY and REPLAY_STATUS of one canonical row."""
    if row.get(S.INPUT_ERROR):
        row[S.REPLAY], row[S.REPLAY_STATUS] = [], "not_run"
        return row
    turns = row[S.TURNS] or []
    code_turns = [i for i, t in enumerate(turns) if t[S.TURN_CODE] and t[S.TURN_CODE].strip()]
    if not code_turns:
        row[S.REPLAY], row[S.REPLAY_STATUS] = [], "no_code"
        return row
    inputs = [InputImage(name=img[S.IMG_NAME] or f"input_{k}.png", data=img[S.IMG_BYTES], path=img[S.IMG_PATH] or "")
              for k, img in enumerate(row[S.IMAGES] or [])]
    outcomes = sandbox.replay([turns[i][S.TURN_CODE] for i in code_turns], inputs)
    cells = []
    for cell_index, (turn_index, out) in enumerate(zip(code_turns, outcomes, strict=True)):
        turn = turns[turn_index]
        images = [S.image_record(name, data, *_png_size(data)) for name, data in out.images]
        replayed_text = out.stdout + ("\n" + out.error if out.error else "")
        fidelity = cell_fidelity(
            turn[S.TURN_OBS_TEXT],
            [i[S.IMG_BYTES] for i in turn[S.TURN_OBS_IMAGES] or []],
            replayed_text,
            [i[S.IMG_BYTES] for i in images],
        )
        cells.append(
            {
                S.CELL_INDEX: cell_index,
                S.CELL_TURN: turn_index,
                S.CELL_STATUS: out.status,
                S.CELL_STDOUT: out.stdout,
                S.CELL_ERROR: out.error,
                S.CELL_DURATION_MS: out.duration_ms,
                S.CELL_IMAGES: images,
                S.CELL_FIDELITY: fidelity,
            }
        )
    row[S.REPLAY] = cells
    row[S.REPLAY_STATUS] = summarize_status([c[S.CELL_STATUS] for c in cells])
    return row


class ReplayActor:
    """Ray Data actor: owns one sandbox for its lifetime and replays batches of samples."""

    def __init__(self, cfg: ReplayConfig, stage_metrics: Any = None, allow_weak_sandbox: bool = False):
        # replay.sandbox picks the kind (default: the zygote); it refuses to start below
        # replay.min_sandbox_level unless the run was started with --allow-weak-sandbox.
        self.sandbox = make_sandbox(
            cfg.sandbox,
            sandbox_limits(cfg),
            uid=sandbox_uid(),
            min_level=cfg.min_sandbox_level,
            allow_weaker=allow_weak_sandbox,
        )
        self.metrics = stage_metrics
        check_sandbox_works(self.sandbox)

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        rows = [replay_row(r, self.sandbox) for r in batch.to_pylist()]
        out = S.to_table(rows)
        if self.metrics is not None:
            self.metrics.add.remote("replay", len(rows), time.perf_counter() - start)
        return out
