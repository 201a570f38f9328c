"""Route stage: apply the routing policy, convert text-route samples, stamp lineage."""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from routing.policy import RoutingPolicy
from routing.route import decide
from routing.text_conversion import to_text_sample
from schemas import sample as S


def route_batch(batch: pa.Table, policy: RoutingPolicy, lineage: dict[str, Any], stage_metrics: Any = None):
    start = time.perf_counter()
    rows = batch.to_pylist()
    for row in rows:
        decision = decide(row, policy)
        row[S.ROUTE] = decision.route
        row[S.ROUTE_REASONS] = decision.reasons
        if decision.route == "text":  # the text sample derives from this TwI trajectory
            row[S.TEXT_RESPONSE], row[S.TEXT_FLAGS] = to_text_sample(row)
        row[S.LINEAGE] = {**lineage, S.LIN_DERIVED_FROM: row[S.SAMPLE_ID] if decision.route == "text" else None}
    out = S.to_table(rows)
    if stage_metrics is not None:
        stage_metrics.add.remote("routing", out.num_rows, time.perf_counter() - start)
    return out
