"""Pipeline throughput against its limit, side by side in one invocation (issue 12, P8).

On a sample corpus of ``--n`` records none of which is hostile (default 480; built once and cached
under ``$TWI_CURATE_CACHE`` or ``~/.cache/twi-curate``; see "The corpus" below), each measurement
in a fresh process:

  (L) the limit: every code cell of the corpus executed once in-process, no isolation, with the
      trajectory's state and its inputs preloaded (bench/sandbox.py design (c), same malloc
      settings as the sandbox). Hostile code must never run unsandboxed: the corpus has none.
      L = the summed seconds of that work (writing and decoding the inputs, the cells, reading
      back the images they produced) on one CPU, measured twice: right before and right after
      the 2-CPU pipeline run (L, P2, L, P1), and L is their mean. On a shared machine the same
      work takes 56-89 s from one quarter hour to the next; one L measured minutes before P2
      compared P2 with a different machine. Both measurements are printed and written.
  (P) the full pipeline (``run_pipeline`` with the default config) with Ray started at 2 CPUs
      and at 1 CPU, the process pinned to that many cores (Ray's ``num_cpus`` alone does not
      stop a "1-CPU" run from using every core). Two walls per run: the whole run (Ray start, plan, sandbox check, dedup
      pre-pass, the streamed execute, best-of-N, manifest) and the execute part alone.
      P2 = whole-run wall x 2 CPUs of the 2-CPU run. ``run_pipeline`` starts Ray, as a user's run
      does (a small input's dedup pre-pass runs in the driver meanwhile, beside the sandbox check too).

Prints both and writes to ``--json FILE``::

    {"cost_ratio": P2 / L, "speedup_1_to_2": whole wall 1 CPU / whole wall 2 CPUs,
     "stage_busy_s": {stage: busy seconds of the 2-CPU run}, "samples_per_s": of the 2-CPU run
     (whole run), ...}

plus the same quantities on the execute part (``*_execute``), ``stage_cpu_s`` (CPU seconds the
stage used, sandbox processes included for replay) and the raw numbers of each run. Busy seconds
of stages that overlap on 2 cores include time spent waiting for a core; CPU seconds do not, and
(with L's CPU seconds) stay comparable on a shared, noisy machine. Every run has a
``--timeout``: a stall fails the benchmark instead of hanging it.

The corpus. L is every code cell of the corpus and P the pipeline on the same corpus, so both
must cover the same records. The sample corpus holds one hostile record in eight, whose code L
cannot run; until Dec 2026 this bench ran P on all 480 records of ``sample-corpus --n 480`` and
L on its 420 others, dividing the cost of 480 records by the limit of 420 (in one hour: P2
126.2 s for the 480 with the hostile ones, 125.1 s for 480 without; L 81.0 s for the 420, 94.8 s
for 480). The corpus is now the first ``--n`` non-hostile records of a larger sample corpus (the
same records the smaller one holds, plus the next ones). ``--with-hostile`` measures the old way
(P on the corpus as built, L on its non-hostile part), for comparison with earlier numbers.

    python bench/pipeline.py [--n 480] [--json FILE] [--timeout 3600] [--with-hostile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `python bench/pipeline.py` puts bench/ first on sys.path, where this file would shadow the
# `pipeline` package: look up the project instead (bench.sandbox is then importable too).
sys.path[0] = str(Path(__file__).resolve().parents[1])


def pin_cpus(cpus: int) -> list[int]:
    """Restrict this process (and everything it starts: Ray, its workers, the sandboxes) to
    ``cpus`` cores. Ray's ``num_cpus`` is bookkeeping, not a quota: unpinned, a "1-CPU" run still
    spreads its stages over every core, and wall x CPUs would understate its cost."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < cpus:
        sys.exit(f"bench/pipeline.py: {cpus} CPUs asked, this process may use only {len(cores)} ({cores})")
    os.sched_setaffinity(0, cores[:cpus])
    return cores[:cpus]


def corpus_path(n: int, without_hostile: bool = True) -> Path:
    """``n`` sample-corpus records none of which is hostile (the first ``n`` non-hostile ones of a
    larger sample corpus, whose records are the same as the smaller one's up to its size), so that
    (L) and (P) cover the same records; ``without_hostile=False``: the sample corpus of ``n``
    records as built (one in eight hostile: (L) leaves them out)."""
    from pipeline.cli import cache_dir
    from sample_corpus import ensure_sample_corpus
    from sample_corpus.plan import IMAGES_DIR, LABELS_FILE, case_plan

    if not without_hostile:
        return ensure_sample_corpus(cache_dir() / f"sample-corpus-n{n}-s0", n=n, seed=0)
    total = n
    while sum(case != "hostile" for _, case in case_plan(total)) < n:
        total += 1
    source = ensure_sample_corpus(cache_dir() / f"sample-corpus-n{total}-s0", n=total, seed=0)
    out = cache_dir() / f"sample-corpus-n{n}-s0-without-hostile"
    corpus = out / source.name
    if corpus.exists():
        return corpus
    out.mkdir(parents=True, exist_ok=True)
    records = source.read_text(encoding="utf-8").splitlines()
    labels = (source.parent / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    kept = [(r, lab) for r, lab in zip(records, labels, strict=True) if json.loads(lab)["case"] != "hostile"][:n]
    images = out / IMAGES_DIR  # the records name their images relative to the corpus file
    if not images.exists():
        images.symlink_to(source.parent / IMAGES_DIR, target_is_directory=True)
    (out / LABELS_FILE).write_text("".join(lab + "\n" for _, lab in kept), encoding="utf-8")
    tmp = out / (source.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r, _ in kept), encoding="utf-8")
    tmp.replace(corpus)  # last: its presence marks the folder complete
    return corpus


def limit_worker(corpus: Path) -> dict:
    """(L), in this (fresh) process: bench/sandbox.py's in-process design (c) over every cell."""
    from bench.sandbox import load_trajectories, run_inprocess

    pin_cpus(1)
    trajs = load_trajectories(0, corpus)
    start, cpu = time.perf_counter(), time.process_time()
    per_cell = run_inprocess(trajs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"trajectories": len(trajs), "cells": len(per_cell), "seconds": sum(per_cell), "wall_s": wall,
            "cpu_s": cpu, "loadavg": os.getloadavg()[0]}


def pipeline_worker(corpus: Path, cpus: int, out: Path) -> dict:
    """(P), in this (fresh) process: Ray at ``cpus`` CPUs, the whole run timed from before Ray starts."""
    cores = pin_cpus(cpus)
    start = time.perf_counter()
    from pipeline.config import RunConfig
    from pipeline.run import run_pipeline
    from pipeline.tools.evaluate import agreement

    manifest = run_pipeline([corpus], out, RunConfig(), quiet=True, num_cpus=cpus)  # starts Ray, as a user's run does
    wall = time.perf_counter() - start
    t = manifest["timings"]
    ev = agreement(out, corpus.parent / "labels.jsonl")
    return {
        "cpus": cpus,
        "cores": cores,
        "records": manifest["input_records"],
        "wall_s": wall,
        "execute_s": t["execute_s"],
        "timings": {k: v for k, v in t.items() if k != "stages"},
        "stages": t.get("stages", {}),
        "agreement": f"{ev['agree']}/{ev['labeled']}",
        "loadavg": os.getloadavg()[0],
    }


def _run(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    what = " ".join(args)
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), *args],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        sys.exit(f"bench/pipeline.py: `{what}` did not finish within {timeout:.0f} s (stalled?); "
                 "raise --timeout if the machine is just slow")
    if proc.returncode != 0:
        sys.exit(f"bench/pipeline.py: `{what}` failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def combine_limits(before: dict, after: dict) -> dict:
    """(L) measured before and after the 2-CPU run: their mean, each kept (``seconds_before``,
    ``seconds_after``)."""
    mean = {k: (before[k] + after[k]) / 2 for k in ("seconds", "wall_s", "cpu_s")}
    return {**before, **mean, "seconds_before": before["seconds"], "seconds_after": after["seconds"],
            "loadavg": after["loadavg"]}


def summarize(n: int, lim: dict, runs: dict[int, dict], without_hostile: bool = True) -> dict:
    p2, p1 = runs[2], runs[1]
    L = lim["seconds"]
    stages = {k: v["busy_s"] for k, v in sorted(p2["stages"].items())}
    return {
        "n": n,
        "without_hostile": without_hostile,
        "cost_ratio": round(p2["wall_s"] * 2 / L, 3),
        # against each measurement of L alone (before, after the 2-CPU run)
        "cost_ratio_each_limit": [round(p2["wall_s"] * 2 / lim[k], 3)
                                  for k in ("seconds_before", "seconds_after") if k in lim],
        "speedup_1_to_2": round(p1["wall_s"] / p2["wall_s"], 3),
        "stage_busy_s": stages,
        "stage_cpu_s": {k: v.get("cpu_s") for k, v in sorted(p2["stages"].items())},
        "samples_per_s": round(p2["records"] / p2["wall_s"], 3),
        "cost_ratio_execute": round(p2["execute_s"] * 2 / L, 3),
        "speedup_1_to_2_execute": round(p1["execute_s"] / p2["execute_s"], 3),
        "samples_per_s_execute": round(p2["records"] / p2["execute_s"], 3),
        # the same records' stage CPU at 2 CPUs over at 1 CPU: > 1 when running both cores at once
        # costs this machine CPU time (bench/cores.py measures that on L's own work)
        "stage_cpu_2_over_1": round(sum(v.get("cpu_s", 0) for v in p2["stages"].values())
                                    / max(sum(v.get("cpu_s", 0) for v in p1["stages"].values()), 1e-9), 3),
        "limit": {k: round(v, 3) if isinstance(v, float) else v for k, v in lim.items()},
        "runs": {str(c): r for c, r in runs.items()},
    }


def report(s: dict) -> None:
    lim, r2, r1 = s["limit"], s["runs"]["2"], s["runs"]["1"]
    print(f"corpus: {s['n']} sample-corpus records"
          + (" (no hostile one: (L) and (P) cover the same records)" if s.get("without_hostile") else
             f" ((P) replays the hostile ones too: {s['runs']['2']['records'] - lim['trajectories']} records "
             "more than (L))"))
    print(f"(L) limit, in-process, no isolation: {lim['cells']} cells of {lim['trajectories']} non-hostile "
          f"trajectories, {lim['seconds']:.1f} s of work on 1 CPU (mean of {lim['seconds_before']:.1f} s before and "
          f"{lim['seconds_after']:.1f} s after the 2-CPU run; {lim['seconds'] / max(lim['cells'], 1) * 1000:.0f} ms/cell; {lim['cpu_s']:.1f} s CPU time; "
          f"1-min load average at the end {lim['loadavg']:.1f})")
    for r in (r2, r1):
        t = r["timings"]
        print(f"(P) {r['cpus']} CPU(s): whole run {r['wall_s']:.1f} s wall (Ray start {t.get('ray_init_s', 0):.1f}, "
              f"plan {t.get('plan_s', 0):.1f}, sandbox check {t.get('sandbox_check_s', 0):.1f}, "
              f"dedup pre-pass {t.get('dedup_s', 0):.1f} (<= 2,000 records: beside the sandbox check and Ray start), execute {r['execute_s']:.1f}, "
              f"best-of-N {t.get('best_of_n_s', 0):.1f}); {r['records'] / r['wall_s']:.2f} samples/s; "
              f"agreement {r['agreement']}; load average at the end {r['loadavg']:.1f}")
        print("      stage busy s / CPU s (rows; busy ms/sample, CPU ms/sample): " + ", ".join(
            f"{k} {v['busy_s']:.1f} / {v.get('cpu_s', 0):.1f} ({v['rows']:.0f}; "
            f"{v['busy_s'] / max(v['rows'], 1) * 1000:.0f}, {v.get('cpu_s', 0) / max(v['rows'], 1) * 1000:.0f})"
            for k, v in sorted(r["stages"].items())))
    print(f"cost_ratio = P2/L = whole-run wall x 2 CPUs / L = {s['cost_ratio']:.2f}   "
          f"(execute part only: {s['cost_ratio_execute']:.2f}; against L before / after alone: "
          + " / ".join(f"{r:.2f}" for r in s["cost_ratio_each_limit"]) + ")")
    print(f"speedup 1 -> 2 CPUs (whole run): {s['speedup_1_to_2']:.2f}x   "
          f"(execute part only: {s['speedup_1_to_2_execute']:.2f}x)")
    print(f"samples/s at 2 CPUs (whole run): {s['samples_per_s']:.2f}   (execute part: {s['samples_per_s_execute']:.2f})")
    print(f"stages' CPU s for the same records at 2 CPUs / at 1 CPU: {s['stage_cpu_2_over_1']:.2f} "
          "(the cost of both cores at once on this machine: python bench/cores.py)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480, help="sample-corpus records (>= 480 amortises start-up costs)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before giving up")
    ap.add_argument("--with-hostile", action="store_true",
                    help="the old measurement: (P) on the sample corpus as built (one hostile record in "
                    "eight, replayed and judged), (L) on its non-hostile records only")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, corpus = args.worker[0], Path(args.worker[1])
        result = limit_worker(corpus) if kind == "limit" else pipeline_worker(corpus, int(args.worker[2]), Path(args.worker[3]))
        print(json.dumps(result))
        return
    from pipeline.sandbox.parent import MALLOC_TUNABLES

    corpus = corpus_path(args.n, not args.with_hostile)
    with tempfile.TemporaryDirectory(prefix="twi-bench-pipeline-") as tmp:
        # the sandbox runs cells with these malloc settings: (L) gets the same
        def limit() -> dict:
            return _run(["--worker", "limit", str(corpus)], args.timeout, {"GLIBC_TUNABLES": MALLOC_TUNABLES})

        def pipeline(cpus: int) -> dict:
            return _run(["--worker", "pipeline", str(corpus), str(cpus), str(Path(tmp) / f"out{cpus}")],
                        args.timeout, {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})

        # L on both sides of P2 (L, P2, L, P1): their mean is the limit P2 is compared with
        before = limit()
        runs = {2: pipeline(2)}
        after = limit()
        runs[1] = pipeline(1)
    summary = summarize(args.n, combine_limits(before, after), runs, not args.with_hostile)
    report(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"written: {args.json}")


if __name__ == "__main__":
    main()
