"""Code correctness from the replay.

score = 0 when any cell's replay contradicts its recorded observation (fidelity < 0.8: the
        trajectory reports something its code does not produce) or a cell was forbidden;
otherwise score = (cells with status ok) / (cells counted) · mean(fidelity of cells that have a record).
No code cells: None (nothing to judge).

Replay-environment gaps: when a cell's status is ``replay_env`` (pipeline.stages.replay: a module that is
not installed, a tool function or a referenced file this replay environment lacks) the replay is
incomplete through no fault of the trajectory, so the score is None and the explanation names
the gap and what to do; routing rejects the sample with ``replay_env:<kind>:<name>``.

Recovered errors (policy ``routing.recovered_errors``, default ``accept``): a trajectory
*recovered* when every failing cell (status ``error``; any timeout, memory, killed or skipped cell
rules recovery out) is followed by a later ``ok`` cell and the record has a final answer — it
hit an error, read it and fixed it (VisualSketchpad's graph example: ``NetworkXUnbounded``, then
a corrected cell). It is judged on what it did:

* ``accept``   — recovered failing cells are left out of "cells counted" (the fidelity of a
                 recorded error the replay reproduces still counts);
* ``penalize`` — every cell counts, as for any failure;
* ``reject``   — the score is computed as for ``penalize`` and routing rejects the sample with
                 ``recovered_error``.
The explanation says which cell was fixed by which and what the policy did.
"""

from __future__ import annotations

from typing import Any

from judges.base import Verdict
from schemas import sample as S
from schemas.dimensions import Dimension

FABRICATION_FIDELITY = 0.8
RECOVERED_ERRORS_POLICIES = ("accept", "penalize", "reject")
_NOT_RECOVERABLE = ("timeout", "memory", "killed", "skipped", S.STATUS_FORBIDDEN, S.REPLAY_ENV_STATUS)


def recovered_failures(cells: list[dict[str, Any]], final_answer: str | None) -> list[tuple[int, int]]:
    """[(failing cell, first later ok cell), ...] when the trajectory recovered from every failing
    cell (see the module docstring); [] when it has no failing cell or did not recover."""
    statuses = [c[S.CELL_STATUS] for c in cells]
    if not (final_answer or "").strip() or any(s in _NOT_RECOVERABLE for s in statuses):
        return []
    pairs = []
    for i, s in enumerate(statuses):
        if s == S.STATUS_OK:
            continue
        fix = next((j for j in range(i + 1, len(statuses)) if statuses[j] == S.STATUS_OK), None)
        if fix is None:
            return []
        pairs.append((i, fix))
    return pairs


def _gap_text(gaps: list[tuple[int, str]]) -> str:
    parts = []
    for i, gap in gaps:
        kind, _, name = gap.partition(":")
        what = {"module": f"module {name} is not installed",
                "tool": f"tool function {name} is not provided",
                "file": f"file {name} is not available"}.get(kind, gap)
        parts.append(f"cell {i}: {what}")
    return "; ".join(parts)


class CodeCorrectnessJudge:
    DIMENSION = Dimension(
        "code_correctness",
        minimum=0.6,
        description="the replayed cells run and reproduce the recorded observations; "
        "below: rejected (code failed or replay contradicts the record)",
    )
    name = "metric/code_correctness"
    dimension = DIMENSION.name
    needs = (S.REPLAY, S.FINAL_ANSWER)

    def __init__(self, recovered_errors: str = "accept") -> None:
        if recovered_errors not in RECOVERED_ERRORS_POLICIES:
            raise ValueError(f"recovered_errors must be one of {RECOVERED_ERRORS_POLICIES}, not {recovered_errors!r}")
        self.recovered_errors = recovered_errors

    def judge(self, row: dict[str, Any]) -> Verdict:
        cells = row.get(S.REPLAY) or []
        if not cells:
            return Verdict(None, "no code cells")
        statuses = [c[S.CELL_STATUS] for c in cells]
        if S.STATUS_FORBIDDEN in statuses:
            return Verdict(0.0, f"cell {statuses.index('forbidden')} attempted a forbidden operation")
        gaps = [(c[S.CELL_INDEX], c.get(S.CELL_ENV_GAP) or "unknown") for c in cells
                if c[S.CELL_STATUS] == S.REPLAY_ENV_STATUS]
        if gaps:
            return Verdict(None, f"not judged: the replay environment lacks what the trajectory used "
                                 f"({_gap_text(gaps)}); provide it and rerun")
        fids = [(c[S.CELL_INDEX], c[S.CELL_FIDELITY]) for c in cells if c[S.CELL_FIDELITY] is not None]
        bad = [(i, f) for i, f in fids if f < FABRICATION_FIDELITY]
        if bad:
            i, f = bad[0]
            return Verdict(0.0, f"cell {i}: recorded observation does not match the replay (fidelity {f:.2f})")
        recovered = recovered_failures(cells, row.get(S.FINAL_ANSWER))
        skip = {i for i, _ in recovered} if self.recovered_errors == "accept" else set()
        counted = [s for i, s in enumerate(statuses) if i not in skip]
        ok = counted.count(S.STATUS_OK) / len(counted)
        mean_fid = sum(f for _, f in fids) / len(fids) if fids else 1.0
        failed = [f"{i}:{s}" for i, s in enumerate(statuses) if s != S.STATUS_OK]
        why = f"{counted.count('ok')}/{len(counted)} cells ok, mean fidelity {mean_fid:.2f}"
        if failed:
            why += f"; failed {', '.join(failed)}"
        if recovered:
            fixes = ", ".join(f"cell {i} fixed by cell {j}" for i, j in recovered)
            effect = {"accept": "not counted", "penalize": "counted as failures",
                      "reject": "the sample is rejected"}[self.recovered_errors]
            why += f"; recovered ({fixes}): routing.recovered_errors={self.recovered_errors}, {effect}"
        return Verdict(round(ok * mean_fid, 4), why)
