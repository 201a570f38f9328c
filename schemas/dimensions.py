"""The quality dimensions: each one declared once, by its judge, and registered here.

A dimension is a :class:`Dimension` (name, default routing minimum, the route of a sample scoring
below it, description) declared by its judge's file and registered by one line in
``judges/__init__.py`` (``register(SomeJudge)``). Everything else follows from this registry, read
when used, never copied at import time:

- the score columns of the canonical sample (schemas.sample: ``score_<d>``, ``why_<d>``,
  ``metric_score_<d>``, ``llm_score_<d>``, ``llm_status_<d>``, and ``SAMPLE_SCHEMA``),
- the routing setting ``min_<d>`` and the map ``RoutingPolicy.thresholds()`` (routing.policy),
- the routing reason ``low_<d>`` (routing.route), the manifest's and the report's thresholds and
  histograms, `twi-curate explain` and `inspect`.

schemas does not import judges (data and imports flow ingest -> judges -> routing), so the
registry is filled when ``judges`` is imported. pipeline/__init__.py imports it, and so does
routing (through judges.code_correctness): every process that reads or writes samples, a fresh Ray
worker included, has registered every dimension before it builds a schema. Reading the registry
while it is empty raises instead of building a schema without score columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.sample import ROUTE_REJECTED, ROUTE_TEXT


@dataclass(frozen=True)
class Dimension:
    """One quality dimension scored 0..1 by its judge.

    ``minimum`` is the default of the routing setting ``min_<name>``; a sample scoring below it goes
    to ``below``: ``rejected`` (reason ``low_<name>``, the default) or ``text`` (the text shard;
    visual gain). A null score (the judge could not score) is no evidence either way."""

    name: str
    minimum: float
    description: str
    below: str = ROUTE_REJECTED

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"dimension name {self.name!r} must be a lower-case identifier (a column name)")
        if not 0.0 <= self.minimum <= 1.0:
            raise ValueError(f"minimum of {self.name} must be within [0, 1], got {self.minimum}")
        if self.below not in (ROUTE_REJECTED, ROUTE_TEXT):
            raise ValueError(f"below of {self.name} must be {ROUTE_REJECTED!r} or {ROUTE_TEXT!r}, "
                             f"got {self.below!r}")


_REGISTRY: dict[str, Dimension] = {}  # name -> dimension, in registration (= column) order


def register(dimension: Dimension) -> None:
    """Add a dimension after the registered ones (registering the same declaration again is a no-op)."""
    known = _REGISTRY.get(dimension.name)
    if known is not None and known != dimension:
        raise ValueError(f"dimension {dimension.name!r} is already registered as {known}")
    _REGISTRY[dimension.name] = dimension


def unregister(name: str) -> None:
    """Remove a dimension (a test's or a plugin's own); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered() -> tuple[Dimension, ...]:
    """Every registered dimension, in column order."""
    if not _REGISTRY:
        raise LookupError(
            "no quality dimension is registered: import judges (its registry declares them) before "
            "using the sample schema or the routing policy"
        )
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The registered dimension names, in column order (schemas.sample.DIMENSIONS)."""
    return tuple(d.name for d in registered())


def get(name: str) -> Dimension:
    """The registered dimension called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dimension {name!r}; registered: {list(_REGISTRY)}") from None
