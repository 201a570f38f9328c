"""Per-stage counters (rows, busy seconds, batches) merged across workers by one tiny actor."""

from __future__ import annotations

from collections import defaultdict

import ray


@ray.remote(num_cpus=0)
class StageMetrics:
    def __init__(self):
        self.stats: dict[str, dict[str, float]] = defaultdict(
            lambda: {"rows": 0, "batches": 0, "busy_s": 0.0, "cpu_s": 0.0}
        )
        self.counters: dict[str, dict[str, dict[str, float]]] = {}

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
        """Sum nested counters, e.g. add_counters("llm", {"coherence": {"requests": 3}})."""
        target = self.counters.setdefault(group, {})
        for key, values in counters.items():
            slot = target.setdefault(key, {})
            for name, v in values.items():
                slot[name] = slot.get(name, 0) + v

    def get(self) -> dict[str, dict[str, float]]:
        """Per stage: rows, batches, busy_s (wall time summed over its workers; on shared cores
        this includes waiting for a core), cpu_s (CPU time actually used, where measured; not
        inflated by waiting) and samples_per_s = rows / busy_s (one worker's rate)."""
        return {
            k: {**v, "busy_s": round(v["busy_s"], 3), "cpu_s": round(v["cpu_s"], 3),
                "samples_per_s": round(v["rows"] / v["busy_s"], 3) if v["busy_s"] > 0 else None}
            for k, v in self.stats.items()
        }

    def get_counters(self) -> dict[str, dict[str, dict[str, float]]]:
        return self.counters
