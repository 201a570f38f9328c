"""LLM/VLM judge stage: an actor pool calling an OpenAI-compatible endpoint (judges.llm).

Runs after the metric judges, so every row already carries metric scores to fall back on.
Every actor of the pool (and of every window of the run) shares one failure state, the
:class:`judges.llm.JudgeGuard` held by the run's StageMetrics actor: early stop, circuit
breaker and judging deadline apply to the pool as a whole.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judges.llm import LLMJudgeClient, LLMJudgeSettings, LocalGuard, ResponseCache, guard_limits, judge_rows
from pipeline.stage import Stage


class PoolGuard:
    """The client's guard calls, answered by the run's StageMetrics actor (pipeline.metrics)."""

    def __init__(self, stage_metrics: Any, settings: LLMJudgeSettings):
        self.metrics = stage_metrics
        self.metrics.judge_guard.remote("configure", guard_limits(settings))  # idempotent; ordered before ours

    async def call(self, op: str, *args: Any) -> Any:
        return await self.metrics.judge_guard.remote(op, *args)


@dataclass(kw_only=True)
class LLMJudgeStage(Stage):
    """Ray stage (actors): one event loop, one HTTP client and one semaphore per actor; the
    client's request counters go to the run's StageMetrics actor with every batch."""

    name = "llm_judges"
    actor = True
    settings: LLMJudgeSettings
    cache_dir: str

    def setup(self, metrics: Any | None) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        # without the run's metrics actor (benchmarks), each actor guards alone
        guard = PoolGuard(metrics, self.settings) if metrics is not None else LocalGuard(self.settings)
        self.client = LLMJudgeClient(self.settings, ResponseCache(Path(self.cache_dir)), guard=guard)
        self.judge_id = f"llm/{self.settings.model}"
        self.metrics = metrics

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        counters = self.loop.run_until_complete(judge_rows(rows, self.client, self.judge_id))
        if self.metrics is not None:
            self.metrics.add_counters.remote("llm", counters)
        return rows
