"""Every Ray stage has one shape (pipeline.stage): toy stages defined here run through the shared
wrapper on a real local Ray, set up once per actor and recorded once per batch in a real
StageMetrics actor; and every stage the pipeline assembles (pipeline.run) is such a Stage."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.config import RunConfig, with_llm_judge
from pipeline.metrics import StageMetrics
from pipeline.ray_plan import LLM_ACTOR_CPUS, TASK_CPUS, StageArgs, stage_cpus, task_concurrency
from pipeline.run import curation_stages
from pipeline.stage import Fused, Resources, Stage, add_stage
from pipeline.stages.dedup import KeysStage
from pipeline.stages.ingest import IngestStage
from pipeline.stages.judge import JudgeStage
from pipeline.stages.llm_judge import LLMJudgeStage
from pipeline.stages.replay import ReplayStage
from pipeline.stages.route import RouteStage

pytestmark = pytest.mark.timeout(300)

ROWS, BATCH = 12, 2  # 6 batches, more than the 2 actors of a pool


@dataclass(kw_only=True)
class Numbered(Stage):
    """Toy actor stage: stamps each row with its actor's set-up token and how often it was set up."""

    name = "numbered"
    actor = True

    def setup(self, metrics: Any | None) -> None:
        self.setups = getattr(self, "setups", 0) + 1
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def process(self, rows: list[dict]) -> list[dict]:
        import cv2

        return [{**r, "token": self.token, "setups": self.setups, "cv2_threads": cv2.getNumThreads()} for r in rows]

    def extra_cpu_s(self) -> float:
        return 1.0  # counted once per batch: the call after the batch

    def to_table(self, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows)


@dataclass(kw_only=True)
class Doubled(Stage):
    """Toy task stage."""

    name = "doubled"
    factor: int = 2

    def process(self, rows: list[dict]) -> list[dict]:
        return [{**r, "x": r["x"] * self.factor} for r in rows]

    def to_table(self, rows: list[dict]) -> pa.Table:
        return pa.Table.from_pylist(rows)


@dataclass(kw_only=True)
class Unrecorded(Doubled):
    name = "unrecorded"
    recorded = False


def run_stages(ray, stages: list[Stage]) -> tuple[list[dict], dict[str, dict]]:
    metrics = StageMetrics.remote()
    ds = ray.data.from_items([{"x": i} for i in range(ROWS)], override_num_blocks=ROWS // BATCH)
    for stage in stages:
        ds = add_stage(ds, stage, metrics)
    rows = sorted(ds.take_all(), key=lambda r: r["x"])
    return rows, ray.get(metrics.get.remote())


def test_actor_stage_sets_up_once_per_actor_and_records_once_per_batch(ray_local):
    stage = Numbered(resources=Resources(0.25), batch_size=BATCH, workers=2)
    rows, stats = run_stages(ray_local, [stage])
    assert [r["x"] for r in rows] == list(range(ROWS))
    assert {r["setups"] for r in rows} == {1}  # never set up again for a later batch
    assert {r["cv2_threads"] for r in rows} == {1}  # one actor per CPU: no OpenCV thread pool of its own
    assert 1 <= len({r["token"] for r in rows}) <= 2  # 6 batches, at most one set-up per actor
    assert set(stats) == {"numbered"}
    s = stats["numbered"]
    assert (s["rows"], s["batches"]) == (ROWS, ROWS // BATCH)
    assert s["cpu_s"] >= ROWS // BATCH * 1.0  # its extra CPU, once per batch
    assert s["busy_s"] > 0


def test_task_stages_and_a_fused_actor_each_record_under_their_own_name(ray_local):
    # one actor asks for what its parts ask for, with the first part's batch size and pool
    fused = Fused(Numbered(resources=Resources(0.25, {"sandbox": 0.25}), batch_size=BATCH, workers=2, elastic=True),
                  Doubled(resources=Resources(0.1), batch_size=8, workers=4))
    assert fused.name == "numbered+doubled" and fused.actor
    assert fused.resources.cpus == pytest.approx(0.35) and fused.resources.custom == {"sandbox": 0.25}
    assert (fused.batch_size, fused.workers, fused.elastic) == (BATCH, 2, True)
    plain = Fused(Numbered(resources=Resources(0.25), batch_size=BATCH, workers=1), Doubled(resources=Resources(0.1)))
    rows, stats = run_stages(ray_local, [plain, Doubled(resources=Resources(0.1), factor=3, workers=2),
                                         Unrecorded(resources=Resources(0.1), factor=1)])
    assert [r["x"] for r in rows] == [6 * i for i in range(ROWS)]
    assert {r["setups"] for r in rows} == {1} and len({r["token"] for r in rows}) == 1  # one actor
    assert set(stats) == {"numbered", "doubled"}  # the unrecorded stage ran, unrecorded
    assert stats["numbered"]["batches"] == ROWS // BATCH and stats["numbered"]["rows"] == ROWS
    # "doubled" twice: inside the fused actor (once per batch) and as a task stage (once per batch)
    assert stats["doubled"]["rows"] == 2 * ROWS
    assert ROWS // BATCH < stats["doubled"]["batches"] <= ROWS // BATCH + ROWS


def args(ray, cfg: RunConfig, tmp_path: Path) -> StageArgs:
    cpus = ray.cluster_resources()["CPU"]
    resources = {**stage_cpus(cfg, cpus, 2), "replay_actors": 2, "replay_resources": None}
    return StageArgs(cfg, None, {"run_id": "r"}, 2, resources, tmp_path, False, tmp_path / "keys")


def test_every_stage_the_pipeline_assembles_is_a_stage(ray_local, tmp_path):
    cfg = with_llm_judge(RunConfig(), "http://127.0.0.1:9/v1", "m")
    a = args(ray_local, cfg, tmp_path)
    res = a.resources
    stages = curation_stages("ingest", a)
    assert all(isinstance(s, Stage) for s in stages)
    # ingest, replay and the metric judges in one actor; routing in the last actor (the LLM pool)
    assert [s.name for s in stages] == ["ingest+replay+judges", "llm_judges+routing"]
    fused, llm_route = stages
    ingest, replay, judge = fused.parts()
    llm, route = llm_route.parts()
    assert isinstance(ingest, IngestStage) and isinstance(route, RouteStage) and isinstance(llm, LLMJudgeStage)
    assert isinstance(replay, ReplayStage) and isinstance(judge, JudgeStage) and judge.keys_dir == str(a.keys_dir)
    # the Ray requests of each pool: the fused parts add none of their own
    assert ingest.resources == route.resources == Resources(0.0)
    assert fused.actor and fused.workers == 2 and fused.batch_size == 1  # one read task per batch
    assert fused.resources == Resources(res["replay_cpus_per_actor"] + res["judge_cpus_per_actor"])
    assert (llm_route.actor, llm_route.resources, llm_route.workers, llm_route.elastic) == (
        True, Resources(LLM_ACTOR_CPUS), cfg.judges.llm.pool_size(), False)
    assert llm_route.batch_size == cfg.judges.llm.batch_size
    assert [s.name for s in curation_stages("replay", a)] == ["replay+judges", "llm_judges+routing"]
    assert curation_stages("replay", a)[0].batch_size == cfg.replay.batch_size
    judges_only = curation_stages("judges", a)
    assert [s.name for s in judges_only] == ["judges", "llm_judges+routing"]
    assert judges_only[0].resources == Resources(res["judge_cpus_per_actor"]) and judges_only[0].workers == 2
    # without LLM judges routing runs in the replay actor, or after re-judging in the judge actor
    plain = args(ray_local, RunConfig(), tmp_path)
    assert [s.name for s in curation_stages("ingest", plain)] == ["ingest+replay+judges+routing"]
    assert [s.name for s in curation_stages("judges", plain)] == ["judges+routing"]
    # re-routing alone: routing as Ray tasks
    n = task_concurrency()
    (route_only,) = curation_stages("routing", a)
    assert isinstance(route_only, RouteStage)
    assert (route_only.actor, route_only.resources, route_only.batch_size, route_only.workers) == (
        False, Resources(TASK_CPUS), None, n)
    with pytest.raises(ValueError, match="unknown stage"):
        curation_stages("write", a)
    # the other Ray stage of a run, the dedup pre-pass, has the same shape
    assert issubclass(KeysStage, Stage) and not KeysStage.recorded


def test_replay_actors_ask_for_the_sandbox_resource_on_a_cluster_that_declares_it(ray_local, tmp_path):
    a = args(ray_local, RunConfig(), tmp_path)
    a.replay_resources, a.elastic = {"sandbox": a.resources["replay_cpus_per_actor"]}, True
    (fused,) = curation_stages("replay", a)
    assert fused.resources.custom == {"sandbox": a.resources["replay_cpus_per_actor"]} and fused.elastic
    assert fused.parts()[-1].resources.custom is None  # routing, fused in: no request of its own
