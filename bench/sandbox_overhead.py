"""Per-trajectory overhead of the replay sandboxes, measured side by side in one run.

A trivial 2-cell trajectory (``x = 41`` / ``print(x + 1)``) replayed ``--n`` times on a
ZygoteSandbox and ``--n-process`` times on a ProcessSandbox (same layers, fresh interpreter);
prints the median, p10 and p90 wall time of ``replay()`` per level, and for the zygote the median
of the child's own start-up (fork to ready) and the median with cgroups turned off (moving a
process between cgroups is not needed per trajectory: the zygote joins once).

    python bench/sandbox_overhead.py [--n 60] [--n-process 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, not bench/pipeline.py

CELLS = ["x = 41", "print(x + 1)"]


def _measure(box, n: int) -> dict:
    box.replay(CELLS, [])  # warm: first fork touches fresh pages, caches the work dir path
    walls, startups = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        out = box.replay(CELLS, [])
        walls.append((time.perf_counter() - t0) * 1000.0)
        assert [o.status for o in out] == ["ok", "ok"] and out[1].stdout == "42\n", out
        if box.last_startup_ms is not None:
            startups.append(box.last_startup_ms)
    walls.sort()
    return {
        "median_ms": round(statistics.median(walls), 1),
        "p10_ms": round(walls[len(walls) // 10], 1),
        "p90_ms": round(walls[(len(walls) * 9) // 10], 1),
        "child_startup_median_ms": round(statistics.median(startups), 1) if startups else None,
        "n": n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=60, help="zygote replays")
    ap.add_argument("--n-process", type=int, default=8, help="process-level replays")
    args = ap.parse_args()
    from pipeline.sandbox import ProcessSandbox, ZygoteSandbox

    uid = 60000 + os.getpid() % 5000
    results = {}
    with ZygoteSandbox(uid=uid, gid=uid) as box:
        results["zygote"] = _measure(box, args.n)
        results["zygote"]["layers_missing"] = [k for k, v in box.last_layers.items() if not v]
    with ZygoteSandbox(uid=uid, gid=uid, disabled={"cgroup_memory", "cgroup_pids"}) as box:
        results["zygote_without_cgroups"] = _measure(box, args.n)
    with ProcessSandbox(uid=uid, gid=uid) as box:
        results["process"] = _measure(box, args.n_process)
    results["speedup"] = round(results["process"]["median_ms"] / results["zygote"]["median_ms"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
