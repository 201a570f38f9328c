"""Code correctness from the replay.

score = 0 when any cell's replay contradicts its recorded observation (fidelity < 0.8: the
        trajectory reports something its code does not produce) or a cell was forbidden;
otherwise score = (cells with status ok) / (cells) · mean(fidelity of cells that have a record).
No code cells: None (nothing to judge).
"""

from __future__ import annotations

from typing import Any

from judges.base import Verdict
from schemas import sample as S

FABRICATION_FIDELITY = 0.8


class CodeCorrectnessJudge:
    name = "metric/code_correctness"
    dimension = "code_correctness"
    needs = (S.REPLAY,)

    def judge(self, row: dict[str, Any]) -> Verdict:
        cells = row.get(S.REPLAY) or []
        if not cells:
            return Verdict(None, "no code cells")
        statuses = [c[S.CELL_STATUS] for c in cells]
        if "forbidden" in statuses:
            return Verdict(0.0, f"cell {statuses.index('forbidden')} attempted a forbidden operation")
        fids = [(c[S.CELL_INDEX], c[S.CELL_FIDELITY]) for c in cells if c[S.CELL_FIDELITY] is not None]
        bad = [(i, f) for i, f in fids if f < FABRICATION_FIDELITY]
        if bad:
            i, f = bad[0]
            return Verdict(0.0, f"cell {i}: recorded observation does not match the replay (fidelity {f:.2f})")
        ok = statuses.count("ok") / len(statuses)
        mean_fid = sum(f for _, f in fids) / len(fids) if fids else 1.0
        failed = [f"{i}:{s}" for i, s in enumerate(statuses) if s != "ok"]
        why = f"{statuses.count('ok')}/{len(statuses)} cells ok, mean fidelity {mean_fid:.2f}"
        return Verdict(round(ok * mean_fid, 4), why + (f"; failed {', '.join(failed)}" if failed else ""))
