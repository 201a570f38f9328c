"""The judge protocol: every dimension's judge maps a canonical row to a score and a why.

Metric judges and (later) LLM/VLM judges implement the same protocol, so routing only ever
sees ``score_<dimension>`` (0..1, or null when the judge cannot score) and ``why_<dimension>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Verdict:
    score: float | None  # 0..1, None = cannot be judged on this sample (routing treats as no evidence)
    why: str

    def __post_init__(self):
        if self.score is not None and not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be within [0, 1], got {self.score}")


class Judge(Protocol):
    name: str  # judge id, e.g. "metric/visual_gain"
    dimension: str  # one of schemas.sample.DIMENSIONS
    needs: tuple[str, ...]  # columns of schemas.sample the judge reads

    def judge(self, row: dict[str, Any]) -> Verdict: ...


def band(x: float, lo: float, hi: float) -> float:
    """1 inside [lo, hi], falling linearly to 0 at 0 below and as hi/x above."""
    if x < lo:
        return max(0.0, x / lo) if lo > 0 else 1.0
    if x > hi:
        return hi / x
    return 1.0
