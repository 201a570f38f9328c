"""Per-stage counters (rows, busy seconds, batches) merged across workers by one tiny actor."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import ray


def _merge(target: dict[str, Any], values: dict[str, Any]) -> None:
    for name, v in values.items():
        if isinstance(v, dict):
            _merge(target.setdefault(name, {}), v)
        else:
            target[name] = target.get(name, 0) + v


@ray.remote(num_cpus=0)
class StageMetrics:
    def __init__(self):
        self.stats: dict[str, dict[str, float]] = defaultdict(
            lambda: {"rows": 0, "batches": 0, "busy_s": 0.0, "cpu_s": 0.0}
        )
        self.counters: dict[str, dict[str, dict[str, float]]] = {}
        self.guard: Any = None  # the LLM judges' judges.llm.JudgeGuard, when they run

    def add(self, stage: str, rows: int, seconds: float, cpu_s: float | None = None) -> None:
        """``seconds``: wall time in the stage's code; ``cpu_s``: CPU time it used (its process,
        and for replay the sandbox processes too), when the stage measures it."""
        s = self.stats[stage]
        s["rows"] += rows
        s["batches"] += 1
        s["busy_s"] += seconds
        if cpu_s is not None:
            s["cpu_s"] += cpu_s

    def add_counters(self, group: str, counters: dict[str, dict[str, float]]) -> None:
        """Sum nested counters, e.g. add_counters("llm", {"coherence": {"requests": 3}}) (deeper
        dicts are summed too, e.g. {"coherence": {"errors_by_kind": {"http_500": 2}}})."""
        _merge(self.counters.setdefault(group, {}), counters)

    def judge_guard(self, op: str, *args: Any) -> Any:
        """The LLM judges' run-wide state, shared by every actor of the pool and every window of the
        run: op "configure" (judges.llm.guard_limits, first call wins), then the JudgeGuard's
        "admit", "waiting" and "report"."""
        from judges.llm import JudgeGuard

        if op == "configure":
            if self.guard is None:
                self.guard = JudgeGuard(**args[0])
            return None
        return getattr(self.guard, op)(*args)

    def get(self) -> dict[str, dict[str, float]]:
        """Per stage: rows, batches, busy_s (wall time summed over its workers; on shared cores
        this includes waiting for a core), cpu_s (CPU time actually used, where measured; not
        inflated by waiting) and samples_per_s = rows / busy_s (one worker's rate)."""
        return {
            k: {**v, "busy_s": round(v["busy_s"], 3), "cpu_s": round(v["cpu_s"], 3),
                "samples_per_s": round(v["rows"] / v["busy_s"], 3) if v["busy_s"] > 0 else None}
            for k, v in self.stats.items()
        }

    def get_counters(self) -> dict[str, Any]:
        """The summed counters; with LLM judges also "llm_guard": the JudgeGuard's summary (stop
        status, reason, an example failed response)."""
        return {**self.counters, **({"llm_guard": self.guard.summary()} if self.guard is not None else {})}
