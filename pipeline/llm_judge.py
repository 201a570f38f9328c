"""LLM/VLM judge stage: an actor pool calling an OpenAI-compatible endpoint (judges.llm).

Runs after the metric judges, so every row already carries metric scores to fall back on.
Every actor of the pool (and of every window of the run) shares one failure state, the
:class:`judges.llm.JudgeGuard` held by the run's StageMetrics actor: early stop, circuit
breaker and judging deadline apply to the pool as a whole.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from judges.llm import LLMJudgeClient, LLMJudgeSettings, LocalGuard, ResponseCache, guard_limits, judge_rows
from schemas import sample as S


class PoolGuard:
    """The client's guard calls, answered by the run's StageMetrics actor (pipeline.metrics)."""

    def __init__(self, stage_metrics: Any, settings: LLMJudgeSettings):
        self.metrics = stage_metrics
        self.metrics.judge_guard.remote("configure", guard_limits(settings))  # idempotent; ordered before ours

    async def call(self, op: str, *args: Any) -> Any:
        return await self.metrics.judge_guard.remote(op, *args)


class LLMJudgeStage:
    """Ray Data callable: one event loop, one HTTP client and one semaphore per actor."""

    def __init__(self, settings: LLMJudgeSettings, cache_dir: str, stage_metrics: Any = None):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        # without the run's metrics actor (benchmarks), each actor guards alone
        guard = PoolGuard(stage_metrics, settings) if stage_metrics is not None else LocalGuard(settings)
        self.client = LLMJudgeClient(settings, ResponseCache(Path(cache_dir)), guard=guard)
        self.judge_id = f"llm/{settings.model}"
        self.metrics = stage_metrics

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        rows = batch.to_pylist()
        counters = self.loop.run_until_complete(judge_rows(rows, self.client, self.judge_id))
        out = S.to_table(rows)
        if self.metrics is not None:
            self.metrics.add.remote("llm_judges", out.num_rows, time.perf_counter() - start)
            self.metrics.add_counters.remote("llm", counters)
        return out
