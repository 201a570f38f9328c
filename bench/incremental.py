"""Cost of an unchanged rerun against the first run, side by side in one invocation (issue P9).

On a sample corpus of ``--n`` records (default 480, cached like bench/pipeline.py's), each run in
a fresh process at 2 CPUs (Ray started inside, as `twi-curate run` does):

  first   `run_pipeline` into an empty OUT;
  rerun   the same input and settings into the same OUT: every record is already curated, so
          nothing is replayed, judged or routed (the run parses the input once, hard-links the
          earlier shards into a new version and publishes it);
  reroute the same input with one routing threshold changed: every stored row re-routed from its
          stored scores (no replay, no judging).

Prints the walls and ``rerun / first`` (target <= 0.1), writes them to ``--json FILE``.

    python bench/incremental.py [--n 480] [--json FILE] [--timeout 3600]
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

sys.path[0] = str(Path(__file__).resolve().parents[1])  # `pipeline` is the package, not bench/pipeline.py


def worker(corpus: Path, out: Path, reroute: bool) -> dict:
    start = time.perf_counter()
    from pipeline.config import RunConfig
    from pipeline.ray_plan import init_ray
    from pipeline.run import run_pipeline

    cfg = RunConfig()
    if reroute:
        cfg = RunConfig(routing=cfg.routing.model_copy(update={"min_visual_gain": cfg.routing.min_visual_gain + 0.2}))
    init_ray(quiet=True, num_cpus=2)
    m = run_pipeline([corpus], out, cfg, quiet=True, num_cpus=2)
    return {"wall_s": time.perf_counter() - start, "run": m["run"], "rows": m["output_records"],
            "stages": {k: v["rows"] for k, v in m["timings"]["stages"].items()}, "conservation": m["conservation"]["ok"]}


def run(corpus: Path, out: Path, reroute: bool, timeout: float) -> dict:
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", str(corpus), str(out), str(int(reroute))]
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    except subprocess.TimeoutExpired:
        sys.exit(f"bench/incremental.py: a run did not finish within {timeout:.0f} s")
    if p.returncode != 0:
        sys.exit(f"bench/incremental.py: a run failed:\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=480)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(Path(a.worker[0]), Path(a.worker[1]), a.worker[2] == "1")))
        return
    from bench.pipeline import corpus_path

    corpus = corpus_path(a.n)
    with tempfile.TemporaryDirectory(prefix="twi-bench-incremental-") as tmp:
        out = Path(tmp) / "out"
        first = run(corpus, out, False, a.timeout)
        rerun = run(corpus, out, False, a.timeout)
        reroute = run(corpus, out, True, a.timeout)
    result = {"n": a.n, "first": first, "rerun": rerun, "reroute": reroute,
              "rerun_over_first": round(rerun["wall_s"] / first["wall_s"], 4),
              "reroute_over_first": round(reroute["wall_s"] / first["wall_s"], 4)}
    for name in ("first", "rerun", "reroute"):
        r = result[name]
        print(f"{name:8s} {r['wall_s']:7.1f} s  rows {r['rows']}  stages {r['stages']}  "
              f"already curated {r['run']['already_curated']}  conservation {'ok' if r['conservation'] else 'FAILED'}")
    print(f"rerun / first = {result['rerun_over_first']:.3f}   (target <= 0.1)")
    print(f"reroute / first = {result['reroute_over_first']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
        print(f"written: {a.json}")


if __name__ == "__main__":
    main()
