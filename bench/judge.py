"""LLM judge throughput against an OpenAI-compatible server with fixed latency L and
concurrency C: the ideal is C / L requests per second. Prints measured throughput and its
fraction of that limit, for the judge client alone and for the Ray Data actor pool.

    python bench/judge.py [--latency 1.0] [--concurrency 16] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from judges.llm import LLMJudgeClient, LLMJudgeSettings, ResponseCache, judge_rows  # noqa: E402
from schemas import sample as S  # noqa: E402
from tests.openai_server import FakeOpenAI  # noqa: E402


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        r = S.empty_row()
        r.update({S.SAMPLE_ID: f"b{i}", S.QUESTION: f"Benchmark question {i}?", S.FINAL_ANSWER: str(i),
                  S.TURNS: [{S.TURN_REASONING: f"step {i}", S.TURN_CODE: None, S.TURN_OBS_TEXT: None,
                             S.TURN_OBS_IMAGES: []}], S.IMAGES: [], S.REPLAY: []})
        out.append(r)
    return out


def bench_client(url: str, c: int, n: int, cache: Path) -> float:
    st = LLMJudgeSettings(endpoint=url, model="bench", dimensions=["coherence"], per_actor_concurrency=c,
                          concurrency=c)

    async def go():
        client = LLMJudgeClient(st, ResponseCache(cache))
        t = time.perf_counter()
        await judge_rows(rows(n), client, "llm/bench")
        dt = time.perf_counter() - t
        await client.close()
        return dt

    return n / asyncio.run(go())


def bench_ray(url: str, c: int, n: int, cache: Path) -> float:
    import os

    import ray

    from pipeline.stage import Resources, add_stage
    from pipeline.stages.llm_judge import LLMJudgeStage

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(include_dashboard=False, log_to_driver=False)
    st = LLMJudgeSettings(endpoint=url, model="bench-ray", dimensions=["coherence"], concurrency=c,
                          per_actor_concurrency=max(1, c // 2), batch_size=max(1, n // 4))
    ds = ray.data.from_arrow(S.to_table(rows(n))).repartition(max(2, n // st.batch_size))
    ray.data.DataContext.get_current().enable_progress_bars = False
    def stage(settings: LLMJudgeSettings) -> LLMJudgeStage:
        return LLMJudgeStage(settings=settings, cache_dir=str(cache), resources=Resources(0.1),
                             batch_size=settings.batch_size, workers=settings.pool_size())

    ds = add_stage(ds, stage(st))
    ds = ds.materialize()  # a first pass starts the actors; the timed pass below is steady state
    t = time.perf_counter()
    ds2 = ray.data.from_arrow(S.to_table(rows(n))).repartition(max(2, n // st.batch_size))
    ds2 = add_stage(ds2, stage(st.model_copy(update={"model": "bench-ray-2"})))
    ds2.materialize()
    dt = time.perf_counter() - t
    ray.shutdown()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=1.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    limit = a.concurrency / a.latency
    with FakeOpenAI(latency_s=a.latency) as server, tempfile.TemporaryDirectory() as tmp:
        tput = bench_client(server.base_url, a.concurrency, a.requests, Path(tmp) / "c1")
        print(f"latency L={a.latency}s concurrency C={a.concurrency}: limit C/L = {limit:.1f} req/s")
        print(f"judge client : {tput:.1f} req/s = {tput / limit:.3f} of the limit "
              f"(server peak in flight {server.max_inflight})")
        if not a.no_ray:
            server.max_inflight = 0
            tput = bench_ray(server.base_url, a.concurrency, a.requests, Path(tmp) / "c2")
            print(f"ray actor pool: {tput:.1f} req/s = {tput / limit:.3f} of the limit "
                  f"(server peak in flight {server.max_inflight}; includes task scheduling)")


if __name__ == "__main__":
    main()
