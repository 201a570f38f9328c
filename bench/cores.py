"""What this machine's cores give, side by side in one run: the same in-process work (bench/pipeline.py's
limit L: bench/sandbox.py design (c), no isolation, the sandbox's malloc settings) on each core
alone, then on every core at once (one copy per core), each copy in a fresh process pinned to its
core; in interleaved rounds, medians reported (the machine's speed drifts within minutes).

bench/pipeline.py measures L on the first core alone and the pipeline's 2-CPU run on both cores at
once, so its ``cost_ratio`` also holds what the second core and running both cores at once cost
this machine, whatever the pipeline does. This prints those factors:

  * ``core_k / core_0`` (alone): how much slower core k is than the core L is measured on;
  * ``together / alone`` per core: what running every core at once costs each (shared caches,
    memory bandwidth, the host);
  * ``machine_factor``: CPU seconds of the copies run together / the first core's alone: the
    ratio the pipeline's 2-CPU run pays over L for the same work.

    python bench/cores.py [--n 480] [--trajectories 60] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])


def worker(corpus: Path, core: int, count: int) -> dict:
    """In this (fresh) process pinned to ``core``: the first ``count`` non-hostile trajectories in-process."""
    from bench.sandbox import load_trajectories, run_inprocess

    os.sched_setaffinity(0, [core])
    trajs = load_trajectories(0, corpus)[:count]
    run_inprocess(trajs[:3])  # imports and first-touch of the libraries out of the measurement
    start, cpu = time.perf_counter(), time.process_time()
    run_inprocess(trajs)
    return {"core": core, "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - start}


def _start(corpus: Path, core: int, count: int) -> subprocess.Popen:
    from pipeline.sandbox.parent import MALLOC_TUNABLES

    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(corpus), str(core), str(count)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES},
    )


def _results(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"bench/cores.py: a worker failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def measure(corpus: Path, count: int, rounds: int) -> dict:
    """``rounds`` rounds of: each core alone, then every core at once; medians per condition (this
    machine's speed drifts by tens of percent within minutes: interleaved rounds keep the
    conditions comparable)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit(f"bench/cores.py: needs at least 2 cores, this process may use {cores}")
    alone: dict[int, list[float]] = {c: [] for c in cores}
    together: dict[int, list[float]] = {c: [] for c in cores}
    for _ in range(rounds):
        for c in cores:
            alone[c].append(_results([_start(corpus, c, count)])[0]["cpu_s"])
        for r in _results([_start(corpus, c, count) for c in cores]):
            together[r["core"]].append(r["cpu_s"])
    a = {c: statistics.median(v) for c, v in alone.items()}
    t = {c: statistics.median(v) for c, v in together.items()}
    first = a[cores[0]]
    return {
        "trajectories": count,
        "rounds": rounds,
        "alone_cpu_s": alone,
        "together_cpu_s": together,
        "core_vs_first": {c: round(a[c] / first, 3) for c in cores},
        "together_vs_alone": {c: round(t[c] / a[c], 3) for c in cores},
        "machine_factor": round(sum(t.values()) / (len(cores) * first), 3),
        "machine_factor_by_round": [
            round(sum(together[c][i] for c in cores) / (len(cores) * alone[cores[0]][i]), 3) for i in range(rounds)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480, help="sample-corpus records (the corpus bench/pipeline.py uses)")
    ap.add_argument("--trajectories", type=int, default=60, help="non-hostile trajectories each copy runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(Path(args.worker[0]), int(args.worker[1]), int(args.worker[2]))))
        return
    from bench.pipeline import corpus_path

    s = measure(corpus_path(args.n), args.trajectories, args.rounds)
    first = min(s["alone_cpu_s"])
    print(f"{s['trajectories']} trajectories in-process (L's work), CPU s per copy, {s['rounds']} interleaved rounds:")
    for c in s["alone_cpu_s"]:
        alone = " / ".join(f"{v:.2f}" for v in s["alone_cpu_s"][c])
        together = " / ".join(f"{v:.2f}" for v in s["together_cpu_s"][c])
        print(f"  core {c}: alone {alone} (median {s['core_vs_first'][c]:.2f}x core {first}); "
              f"all cores at once {together} (median {s['together_vs_alone'][c]:.2f}x alone)")
    print(f"machine_factor (CPU s of the same work on all cores at once / on core {first} alone, medians): "
          f"{s['machine_factor']:.2f}; by round: {', '.join(f'{v:.2f}' for v in s['machine_factor_by_round'])}")
    if args.json:
        args.json.write_text(json.dumps(s, indent=2))
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
