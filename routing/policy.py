"""Routing policy: a minimum score per quality dimension, and a few rules, validated by pydantic.

The decision itself lives in routing.route (pure functions); this module only says what the
knobs are and what values they accept.

The minimums are the settings ``min_<dimension>`` (e.g. ``routing.min_visual_gain`` in a config
file), one per registered dimension (schemas.dimensions), defaulting to the minimum its judge
declares. They are not fields of the model, since a dimension registered later (one judge file and
one line in judges/__init__.py) must get its setting without an edit here: they are stored as the
model's extra values, validated (within [0, 1]; unknown keys refused, named in the error as
``routing.<key>``) by a model built from the registry, and read as one map by :meth:`thresholds`.

``recovered_errors`` (default ``accept``): a trajectory that fails once and recovers (every
failing cell is followed by an ok cell, and it gives a final answer) is judged on what it did —
its recovered failures do not lower the code_correctness score. ``penalize`` counts them as
failures; ``reject`` rejects such samples with the reason ``recovered_error``. The code_correctness
judge (built with the same value by pipeline.run) explains which cell fixed which.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from schemas import dimensions as D


def threshold_key(dimension: str) -> str:
    """The routing setting holding a dimension's minimum score."""
    return f"min_{dimension}"


@functools.lru_cache(maxsize=8)
def _thresholds_model(dims: tuple[D.Dimension, ...]) -> type[BaseModel]:
    """A model with one ``min_<dimension>`` field per dimension (default: its declared minimum)."""
    fields: dict[str, Any] = {
        threshold_key(d.name): (float, Field(d.minimum, ge=0, le=1, description=d.description)) for d in dims
    }
    return create_model("Thresholds", __config__=ConfigDict(extra="forbid"), **fields)


class RoutingPolicy(BaseModel):
    """Default policy (S1-VL style): reject broken, fabricated, wrong or incoherent samples;
    send samples whose image operations add little visual information to the text shard;
    keep the rest as TwI. Settings besides the fields: ``min_<dimension>`` (module doc)."""

    model_config = ConfigDict(extra="allow")  # only the min_<dimension> settings, see _minimums

    reject_unverifiable: bool = Field(False, description="reject samples without ground truth")
    recovered_errors: Literal["accept", "penalize", "reject"] = Field(
        "accept",
        description="a trajectory whose every failing cell is followed by an ok cell and that has a final "
        "answer: accept (its recovered failures do not lower code_correctness), penalize (they count "
        "as failures), reject (rejected with recovered_error); see judges.code_correctness",
    )

    @model_validator(mode="before")
    @classmethod
    def _minimums(cls, data: Any) -> Any:
        """Validate every setting that is not a field as a ``min_<dimension>`` of a registered
        dimension and fill in the defaults of those not given, so that the model's dump (and the
        config hash) holds every minimum."""
        if not isinstance(data, dict):
            return data
        fields = {k: v for k, v in data.items() if k in cls.model_fields}
        minimums = _thresholds_model(D.registered()).model_validate(
            {k: v for k, v in data.items() if k not in cls.model_fields}
        )
        return {**fields, **minimums.model_dump()}

    def thresholds(self) -> dict[str, float]:
        """The one map dimension -> minimum score (the ``min_<dimension>`` settings), read by
        routing, the manifest and the report. Falling below it sends a sample where its dimension
        says (``below``: rejected, or the text shard for visual gain). A dimension registered after
        this policy was made has its declared minimum."""
        given = self.model_extra or {}
        return {d.name: float(given.get(threshold_key(d.name), d.minimum)) for d in D.registered()}
