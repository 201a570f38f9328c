"""Judges of the six quality dimensions; each implements judges.base.Judge."""

from __future__ import annotations

from judges.alignment import AlignmentJudge
from judges.base import Judge, Verdict
from judges.code_correctness import CodeCorrectnessJudge
from judges.coherence import CoherenceJudge
from judges.educational_value import EducationalValueJudge
from judges.scientific_accuracy import ScientificAccuracyJudge
from judges.visual_gain import VisualGainJudge


def metric_judges(visual_tokens: int = 1280, patch_px: int = 28, recovered_errors: str = "accept") -> list[Judge]:
    """The default judge set: one metric judge per dimension, in schemas.sample.DIMENSIONS order.

    ``recovered_errors`` is the routing policy's ``recovered_errors`` (judges.code_correctness)."""
    return [
        VisualGainJudge(visual_tokens, patch_px),
        CoherenceJudge(),
        CodeCorrectnessJudge(recovered_errors),
        ScientificAccuracyJudge(),
        AlignmentJudge(),
        EducationalValueJudge(),
    ]


__all__ = ["Judge", "Verdict", "metric_judges"]
