"""The run's Ray plan: starting Ray, the metrics actor, and how many workers of each stage with
how many CPUs, so that every stage can run at once on this machine or cluster.

The stages declare these numbers (pipeline.stage); pipeline.run hands them over from here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.config import RunConfig
from pipeline.metrics import StageMetrics

log = logging.getLogger(__name__)

# Ray kills a task worker idle for more than 1 s once more workers exist than CPUs (actors count),
# and the task stages (pre-pass, ingest, route, write) come in bursts between the replay batches:
# a 480-record run started 20 task workers, each paying ~2.5 s of CPU for its imports (48 s in
# all, a quarter of the whole run's CPU on 2 cores). Idle task workers are kept for the run instead
# (3 workers, 28 s). A cluster started with `ray start` keeps its own settings: ray_cluster.yaml's
# head passes the same ones (--system-config; tests/test_cluster_config.py keeps them equal).
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}


def init_ray(address: str | None = None, quiet: bool = False, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per run. Local runs stay on loopback."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=not quiet, logging_level=logging.WARNING)
        return
    # A local Ray stays on 127.0.0.1 when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set before ray was
    # imported (twi-curate run does: pipeline.cli.local_ray_on_loopback); set now, Ray ignores it.
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        log.warning("the local Ray will listen on this machine's network address: set "
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before importing ray to keep it on 127.0.0.1")
    ray.init(
        address="local",  # a new local Ray, never another one running on this machine (RAY_ADDRESS, `ray start`)
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=not quiet,
        logging_level=logging.WARNING,
        configure_logging=True,
        _system_config=LOCAL_SYSTEM_CONFIG,
    )


def start_metrics() -> Any:
    """The run's StageMetrics actor, beside the driver: a worker node lost mid-run must not take
    the counters (and the LLM judges' guard) with it."""
    node = ray.get_runtime_context().get_node_id()
    return StageMetrics.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()


def replay_pool_size(cfg: RunConfig) -> int:
    """One replay actor per CPU by default (each holds one sandbox), at least one."""
    if cfg.replay.actors:
        return cfg.replay.actors
    cpus = ray.cluster_resources().get("CPU", 1)
    return max(1, int(cpus))


TASK_CPUS = 0.25  # each task stage (the write, the pre-pass, a re-route); two must fit beside the actor pools


def task_concurrency() -> int:
    """How many tasks of one task stage (the pre-pass, a re-route) run at once: one per CPU. Their small
    CPU request (TASK_CPUS) keeps them schedulable beside the actor pools, but uncapped it lets
    Ray start four worker processes per CPU for each stage, and every new worker pays the
    pipeline's imports (~2.5 s of CPU) for ~10 ms of work per record."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


LLM_ACTOR_CPUS = 0.1  # an LLM judge actor waits on the network; the endpoint is the bottleneck


def stage_cpus(cfg: RunConfig, cluster_cpus: float, pool: int) -> dict[str, float]:
    """CPUs per replay actor and per judge actor, so that every stage can run at once.

    Ray Data runs the replay pool and the judge pool (``pool`` actors each), the LLM pool and
    the write tasks together; if their requests exceed the cluster, a stage never
    gets a slot: the task stages starve and the job waits forever without an error (seen at
    1 CPU), or the judge pool never grows past one actor and caps throughput (seen at 2). The
    configured ``replay.cpus_per_actor`` and ``judges.cpus_per_task`` are kept when they fit and
    scaled down together (never below 0.05) when they do not. The requests are Ray's
    bookkeeping, not a CPU quota: scaled-down actors still use a whole core when it is free.
    """
    llm = cfg.judges.llm
    fixed = 2 * TASK_CPUS + (LLM_ACTOR_CPUS * llm.pool_size() if llm.enabled else 0.0)
    replay, judge = cfg.replay.cpus_per_actor, cfg.judges.cpus_per_task
    wanted = pool * (replay + judge)
    room = max(float(cluster_cpus) - fixed, 0.0)
    scale = min(1.0, room / wanted) if wanted > 0 else 1.0
    return {
        "cluster_cpus": float(cluster_cpus),
        "replay_cpus_per_actor": round(max(replay * scale, 0.05), 4),
        "judge_cpus_per_actor": round(max(judge * scale, 0.05), 4),
    }


SANDBOX_RESOURCE = "sandbox"  # custom resource of the nodes prepared for untrusted code (ray_cluster.yaml)


def replay_placement(cluster: dict[str, float], pool: int, cpus_per_actor: float) -> tuple[int, dict[str, float] | None]:
    """Where replay actors may run: on a cluster whose nodes declare the ``sandbox`` resource,
    only there (each actor asks for as much of it as of CPU), and no more actors than those nodes
    hold (an actor that can never be placed would stall the run). Elsewhere: anywhere."""
    total = cluster.get(SANDBOX_RESOURCE)
    if not total:
        return pool, None
    return max(1, min(pool, int(total / cpus_per_actor + 1e-9))), {SANDBOX_RESOURCE: cpus_per_actor}


@dataclass
class StageArgs:
    """What every stage of a run needs (built once per run by :func:`plan_stages`)."""

    cfg: RunConfig
    metrics: Any
    lineage: dict[str, Any]
    pool_size: int
    resources: dict[str, Any]
    out_dir: Path
    allow_weak_sandbox: bool
    keys_dir: Path | None
    replay_resources: dict[str, float] | None = None  # {"sandbox": x} on a cluster that declares it
    # Several nodes: pools grow from one actor as each node has room. A fixed pool fits on one
    # machine (stage_cpus), but on a cluster the fractional requests must also fit node by node,
    # and a node may leave: a pool that insisted on every actor could wait forever.
    elastic: bool = False


def plan_stages(cfg: RunConfig, metrics: Any, lineage: dict[str, Any], out_dir: Path, allow_weak_sandbox: bool,
                keys_dir: Path | None) -> StageArgs:
    """The run's pools and CPU requests from the cluster Ray reports (:func:`stage_cpus`,
    :func:`replay_placement`); ``resources`` goes into the manifest."""
    pool = replay_pool_size(cfg)
    cluster = ray.cluster_resources()
    resources: dict[str, Any] = stage_cpus(cfg, cluster.get("CPU", 1), pool)
    replay_actors, replay_resources = replay_placement(cluster, pool, resources["replay_cpus_per_actor"])
    resources = {**resources, "replay_actors": replay_actors, "replay_resources": replay_resources}
    return StageArgs(cfg, metrics, lineage, pool, resources, out_dir, allow_weak_sandbox, keys_dir, replay_resources,
                     elastic=sum(1 for n in ray.nodes() if n["Alive"]) > 1)
