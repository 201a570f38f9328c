"""Routing policy: thresholds over the six scores, validated by pydantic.

The decision itself lives in routing.route (pure functions); this module only says what the
knobs are and what values they accept.

``recovered_errors`` (default ``accept``): a trajectory that fails once and recovers (every
failing cell is followed by an ok cell, and it gives a final answer) is judged on what it did —
its recovered failures do not lower the code_correctness score. ``penalize`` counts them as
failures; ``reject`` rejects such samples with the reason ``recovered_error``. The code_correctness
judge (built with the same value by pipeline.run) explains which cell fixed which.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas import sample as S


class RoutingPolicy(BaseModel):
    """Default policy (S1-VL style): reject broken, fabricated, wrong or incoherent samples;
    send samples whose image operations add little visual information to the text shard;
    keep the rest as TwI."""

    model_config = ConfigDict(extra="forbid")

    min_code_correctness: float = Field(
        0.6, ge=0, le=1, description="below: rejected (code failed or replay contradicts the record)"
    )
    min_scientific_accuracy: float = Field(
        0.5, ge=0, le=1, description="below: rejected as a wrong answer (only when ground truth exists)"
    )
    min_coherence: float = Field(0.4, ge=0, le=1, description="below: rejected")
    min_alignment: float = Field(0.5, ge=0, le=1, description="below: rejected")
    min_educational_value: float = Field(0.0, ge=0, le=1, description="below: rejected (0 disables)")
    min_visual_gain: float = Field(
        0.15, ge=0, le=1, description="below: routed to the text shard (image ops add too little)"
    )
    reject_unverifiable: bool = Field(False, description="reject samples without ground truth")
    recovered_errors: Literal["accept", "penalize", "reject"] = Field(
        "accept",
        description="a trajectory whose every failing cell is followed by an ok cell and that has a final "
        "answer: accept (its recovered failures do not lower code_correctness), penalize (they count "
        "as failures), reject (rejected with recovered_error); see judges.code_correctness",
    )

    def thresholds(self) -> dict[str, float]:
        """The one map dimension -> minimum score (the ``min_<dimension>`` settings), read by
        routing, the manifest and the report. Falling below it rejects a sample, except for
        ``visual_gain`` (schemas.sample.VISUAL_GAIN), which sends it to the text shard."""
        return {d: float(getattr(self, f"min_{d}")) for d in S.DIMENSIONS}
