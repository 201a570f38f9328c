"""Pipeline throughput on the bundled corpus: samples/s with Ray on 1 CPU and on 2 CPUs,
measured side by side in one run (each in a fresh process so Ray starts with that many CPUs).

    python bench/pipeline.py [--n 48] [--repeat 1]
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
# `pipeline` package: look up the project instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])


def worker(corpus: Path, cpus: int, out: Path) -> None:
    from pipeline.config import RunConfig
    from pipeline.run import init_ray, run_pipeline

    init_ray(quiet=True, num_cpus=cpus)
    start = time.perf_counter()
    manifest = run_pipeline([corpus], out, RunConfig(), quiet=True, num_cpus=cpus)
    elapsed = time.perf_counter() - start
    print(json.dumps({"cpus": cpus, "records": manifest["input_records"], "seconds": elapsed,
                      "execute_s": manifest["timings"]["execute_s"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run before giving up")
    ap.add_argument("--worker", nargs=3, metavar=("CORPUS", "CPUS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), int(args.worker[1]), Path(args.worker[2]))
        return
    from pipeline.sample_corpus import ensure_sample_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = ensure_sample_corpus(Path(tmp) / "corpus", n=args.n, seed=0)
        results: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for cpus in (1, 2):  # interleaved so machine noise hits both alike
                try:
                    proc = subprocess.run(
                        [sys.executable, __file__, "--worker", str(corpus), str(cpus), str(Path(tmp) / f"out{cpus}")],
                        check=True, capture_output=True, text=True, timeout=args.timeout,
                        env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"},
                    )
                except subprocess.TimeoutExpired:
                    sys.exit(f"the run on {cpus} CPU(s) did not finish within {args.timeout} s (stalled?)")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                results[cpus].append(r["records"] / r["execute_s"])
        best = {c: max(v) for c, v in results.items()}
        print(f"records: {args.n}")
        for c in (1, 2):
            print(f"{c} CPU: {best[c]:.2f} samples/s (runs: {', '.join(f'{x:.2f}' for x in results[c])})")
        print(f"speedup 1 -> 2 CPUs: {best[2] / best[1]:.2f}x")


if __name__ == "__main__":
    main()
