"""One shape for every Ray Data stage of the pipeline, the way NeMo Curator declares its stages.

A :class:`Stage` declares its ``name``, the :class:`Resources` of each worker, its ``batch_size``,
how many workers, and whether it needs an actor (state set up once per worker: a sandbox, the
judges, an HTTP client) or runs as Ray tasks; it implements :meth:`Stage.setup` and
:meth:`Stage.process` (canonical rows in, rows out). :func:`add_stage` puts any stage on a Ray
Data Dataset through one wrapper, :class:`StageRunner`: it sets the stage up, turns each Arrow
batch into rows and back, times each batch (wall and CPU seconds) and records it once in the
run's StageMetrics actor (pipeline.metrics). :class:`Fused` runs several stages one after the
other in the same actor, each timed and recorded under its own name.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from schemas import sample as S

if TYPE_CHECKING:  # Ray is imported where a stage goes on a Dataset: declaring one stays light
    import ray

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Resources:
    """What each worker of a stage asks Ray for: Ray's bookkeeping for placing it, not a quota."""

    cpus: float
    custom: dict[str, float] | None = None  # e.g. {"sandbox": 0.5}: only on nodes that declare it


@dataclass(kw_only=True)
class Stage:
    """A pipeline stage: configuration in the fields, state made in :meth:`setup` on the worker."""

    name: ClassVar[str]  # the stage's name in the run's metrics (manifest timings.stages) and in Ray
    actor: ClassVar[bool] = False  # True: a pool of actors, each set up once; False: Ray tasks
    recorded: ClassVar[bool] = True  # False: left out of the run's metrics (ingest, the dedup pre-pass)

    resources: Resources
    batch_size: int | None = None  # rows per batch (None: Ray Data's, one block)
    workers: int | None = None  # actors in the pool, or tasks at once (None: as many as Ray Data starts)
    elastic: bool = False  # actors: the pool grows from one to ``workers`` as the nodes have room

    def setup(self, metrics: Any | None) -> None:
        """Once per actor (per batch for a task stage), before its first batch. ``metrics``: the
        run's StageMetrics actor (None without one, e.g. in benchmarks), for a stage that reports
        more than rows and time."""

    def process(self, rows: Rows) -> Rows:
        """One batch of rows -> the rows that go on (the same dicts may be updated in place)."""
        raise NotImplementedError

    def extra_cpu_s(self) -> float:
        """CPU seconds used outside this process since the last call (e.g. the sandbox's
        processes); the wrapper calls it before and after each batch and counts the second."""
        return 0.0

    def to_table(self, rows: Rows | pa.Table) -> pa.Table:
        """The rows :meth:`process` returned -> the Arrow table the next stage gets (a stage that
        produces a canonical Arrow table, e.g. rows read from a shard, may return it as it is)."""
        return rows if isinstance(rows, pa.Table) else S.to_table(rows)

    def parts(self) -> list[Stage]:
        """The stages timed and recorded one by one in a worker: this one (several: :class:`Fused`)."""
        return [self]


@dataclass(kw_only=True, init=False)
class Fused(Stage):
    """Stages run one after the other in the same actor, on the same rows: what one part produces
    never crosses to another pool (replay + metric judges: the replayed images stay in the actor,
    which keeps a core busy both while its sandbox works and while it judges). Each part is set
    up, timed and recorded under its own name. The actor asks for the CPUs and custom resources
    of all its parts and takes the first part's batch size (what comes in) and the pool of its
    first actor part."""

    actor = True
    stages: list[Stage]

    def __init__(self, *stages: Stage) -> None:
        custom: dict[str, float] = {}
        for stage in stages:
            for key, amount in (stage.resources.custom or {}).items():
                custom[key] = custom.get(key, 0.0) + amount
        first = stages[0]
        self.stages = list(stages)
        self.resources = Resources(sum(s.resources.cpus for s in stages), custom or None)
        pool = next((s for s in stages if s.actor), first)  # e.g. ingest's read tasks into the replay actors
        self.batch_size, self.workers, self.elastic = first.batch_size, pool.workers, pool.elastic

    @property
    def name(self) -> str:
        return "+".join(s.name for s in self.stages)

    def parts(self) -> list[Stage]:
        return [part for stage in self.stages for part in stage.parts()]


def single_threaded_libraries() -> None:
    """Run OpenCV on this worker's thread only. Parallelism comes from the pools (one replay actor
    per CPU, pipeline.ray_plan), as Ray's OMP_NUM_THREADS=1 for its workers and the sandbox's
    environment assume; OpenCV's own pool (one thread per CPU by default) would only compete with
    the other actors and their sandboxes for the same cores."""
    import cv2

    cv2.setNumThreads(1)


class StageRunner:
    """The Ray Data callable of every stage: sets the stage up once, then per Arrow batch: rows
    through each part, each part timed (wall and CPU seconds, plus its :meth:`Stage.extra_cpu_s`)
    and recorded once in the run's StageMetrics actor, the last part's rows back to Arrow."""

    def __init__(self, stage: Stage, metrics: Any | None = None) -> None:
        single_threaded_libraries()
        self.parts = stage.parts()
        self.metrics = metrics
        for part in self.parts:
            part.setup(metrics)

    def __call__(self, batch: pa.Table) -> pa.Table:
        wall, cpu = time.perf_counter(), time.process_time()
        rows: Rows = batch.to_pylist()
        table = None
        for k, part in enumerate(self.parts):
            part.extra_cpu_s()  # from here on, the extra CPU is this part's
            rows = part.process(rows)
            if k == len(self.parts) - 1:
                table = part.to_table(rows)
            now_wall, now_cpu = time.perf_counter(), time.process_time()
            extra = part.extra_cpu_s()
            if self.metrics is not None and part.recorded:
                self.metrics.add.remote(part.name, len(rows), now_wall - wall, now_cpu - cpu + extra)
            wall, cpu = now_wall, now_cpu
        return table


def task_fn(stage: Stage, metrics: Any | None) -> Callable[[pa.Table], pa.Table]:
    """A task stage's Ray Data function (named after the stage in Ray's progress and processes)."""

    def run(batch: pa.Table) -> pa.Table:
        return StageRunner(stage, metrics)(batch)

    run.__name__ = run.__qualname__ = stage.name
    return run


def actor_pool(stage: Stage) -> ray.data.ActorPoolStrategy:
    """A fixed pool of ``stage.workers`` actors; an elastic stage's pool grows from one actor as
    far as the nodes have room (pipeline.ray_plan.StageArgs.elastic: a pool that insisted on every
    actor could wait forever for one no node can place, and starve the task stages)."""
    import ray

    size = stage.workers or 1
    if stage.elastic and size > 1:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=size)
    return ray.data.ActorPoolStrategy(size=size)


def add_stage(ds: ray.data.Dataset, stage: Stage, metrics: Any | None = None) -> ray.data.Dataset:
    """``ds`` through ``stage`` (Arrow batches of ``stage.batch_size`` rows), with its resources:
    an actor pool (:func:`actor_pool`) or at most ``stage.workers`` tasks at once."""
    import ray

    options: dict[str, Any] = {"batch_size": stage.batch_size, "batch_format": "pyarrow",
                               "num_cpus": stage.resources.cpus}
    if stage.resources.custom:
        options["resources"] = stage.resources.custom
    if stage.actor:  # a subclass named after the stage: Ray shows MapBatches(ingest+replay+judges+routing)
        runner = type(stage.name, (StageRunner,), {})
        return ds.map_batches(runner, fn_constructor_kwargs={"stage": stage, "metrics": metrics},
                              compute=actor_pool(stage), **options)
    return ds.map_batches(task_fn(stage, metrics), compute=ray.data.TaskPoolStrategy(size=stage.workers), **options)
