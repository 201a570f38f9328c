"""Scientific accuracy (metric): the final answer verified against the ground truth.

score = 1 when judges.answers.answers_match(final_answer, ground_truth), else 0;
None when the sample has no ground truth (unverifiable).
"""

from __future__ import annotations

from typing import Any

from judges.answers import answers_match
from judges.base import Verdict
from schemas import sample as S
from schemas.dimensions import Dimension


class ScientificAccuracyJudge:
    DIMENSION = Dimension(
        "scientific_accuracy",
        minimum=0.5,
        description="the final answer matches the ground truth; "
        "below: rejected as a wrong answer (only when ground truth exists)",
    )
    name = "metric/scientific_accuracy"
    dimension = DIMENSION.name
    needs = (S.FINAL_ANSWER, S.GROUND_TRUTH, S.QUESTION)

    def judge(self, row: dict[str, Any]) -> Verdict:
        gold, pred = row.get(S.GROUND_TRUTH), row.get(S.FINAL_ANSWER)
        if gold is None or not str(gold).strip():
            return Verdict(None, "no ground truth: unverifiable")
        if pred is None or not pred.strip():
            return Verdict(0.0, "no final answer")
        if answers_match(pred, gold, question=row.get(S.QUESTION)):
            return Verdict(1.0, f"final answer {pred.strip()[:40]!r} matches ground truth")
        return Verdict(0.0, f"final answer {pred.strip()[:40]!r} != ground truth {gold.strip()[:40]!r}")
