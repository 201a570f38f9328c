"""Route stage: apply the routing policy, convert text-route samples, stamp lineage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.stage import Stage
from routing.policy import RoutingPolicy
from routing.route import decide
from routing.text_conversion import to_text_sample
from schemas import sample as S


def route_rows(rows: list[dict[str, Any]], policy: RoutingPolicy, lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row (updated in place) with its route, the reasons, the text sample of a text-route
    row, and its lineage."""
    for row in rows:
        decision = decide(row, policy)
        row[S.ROUTE] = decision.route
        row[S.ROUTE_REASONS] = decision.reasons
        if decision.route == "text":  # the text sample derives from this TwI trajectory
            row[S.TEXT_RESPONSE], row[S.TEXT_FLAGS] = to_text_sample(row)
        row[S.LINEAGE] = {**lineage, S.LIN_DERIVED_FROM: row[S.SAMPLE_ID] if decision.route == "text" else None}
    return rows


@dataclass(kw_only=True)
class RouteStage(Stage):
    """:func:`route_rows` on every batch: in the last actor stage of a run, in Ray tasks when the
    run only re-routes stored rows (pipeline.run.curation_stages)."""

    name = "routing"
    policy: RoutingPolicy
    lineage: dict[str, Any]

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return route_rows(rows, self.policy, self.lineage)
