"""Judges of the quality dimensions; each implements judges.base.Judge. This module is the registry.

Adding a dimension takes one judge file and one line. The file (judges/<name>.py) holds a judge
class with ``DIMENSION = schemas.dimensions.Dimension(...)`` (name, default routing minimum,
``below``: rejected by default or text, description), ``dimension = DIMENSION.name``, ``name``,
``needs`` and ``judge(row) -> Verdict``; its constructor takes any of the judge settings below by
name. The line is ``register(TheJudge)`` at the end of this module, in column order. The sample
schema's columns, the routing setting ``min_<name>``, the routing reason ``low_<name>``, the
manifest, the report, `explain` and `inspect` follow from the registry (schemas.dimensions).

The registration runs when ``judges`` is imported; pipeline/__init__.py and routing import it, so
every process that handles samples (a fresh Ray worker too) has every dimension registered.
"""

from __future__ import annotations

import inspect

from judges.alignment import AlignmentJudge
from judges.base import Judge, Verdict
from judges.code_correctness import CodeCorrectnessJudge
from judges.coherence import CoherenceJudge
from judges.educational_value import EducationalValueJudge
from judges.scientific_accuracy import ScientificAccuracyJudge
from judges.visual_gain import VisualGainJudge
from schemas import dimensions

_JUDGES: dict[str, type] = {}  # dimension name -> its metric judge class, in registration order


def register(judge: type) -> None:
    """Register a metric judge class and the dimension it declares (``judge.DIMENSION``)."""
    dimensions.register(judge.DIMENSION)
    _JUDGES[judge.DIMENSION.name] = judge


def unregister(name: str) -> None:
    """Remove a dimension and its judge (a test's or a plugin's own)."""
    _JUDGES.pop(name, None)
    dimensions.unregister(name)


def metric_judges(visual_tokens: int = 1280, patch_px: int = 28, recovered_errors: str = "accept") -> list[Judge]:
    """The default judge set: one metric judge per registered dimension, in schemas.sample.DIMENSIONS order.

    Each judge class is built with the settings its constructor names: ``visual_tokens`` and
    ``patch_px`` (judges.visual_gain), ``recovered_errors`` (the routing policy's, judges.code_correctness)."""
    settings = {"visual_tokens": visual_tokens, "patch_px": patch_px, "recovered_errors": recovered_errors}
    out = []
    for judge in _JUDGES.values():
        takes = inspect.signature(judge).parameters
        out.append(judge(**{k: v for k, v in settings.items() if k in takes}))
    return out


# The registry: one line per dimension, in column order.
register(VisualGainJudge)
register(CoherenceJudge)
register(CodeCorrectnessJudge)
register(ScientificAccuracyJudge)
register(AlignmentJudge)
register(EducationalValueJudge)

__all__ = ["Judge", "Verdict", "metric_judges", "register", "unregister"]
