"""The run's progress, read from the StageMetrics actor while the curation stages run."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0  # how often run_pipeline's ``progress`` callback is called


@contextmanager
def progress_poller(
    progress: Callable[[dict[str, Any]], None] | None, metrics: Any, total: int, done: int = 0
) -> Iterator[None]:
    """While the curation stages run, a driver thread calls ``progress`` every PROGRESS_EVERY_S
    (and once more at the end) with ``{"total": records to route, "done": records routed
    ("done" of them were routed by units committed before, e.g. of a resumed run), "stages":
    {stage: rows since the start}, "elapsed_s": seconds since the start}``, read from the
    StageMetrics actor. A failing callback or poll never fails the run."""
    if progress is None:
        yield
        return
    start = time.perf_counter()
    base = {k: v["rows"] for k, v in ray.get(metrics.get.remote()).items()}  # e.g. rows recomputed before
    stop = threading.Event()

    def report() -> None:
        try:
            stats = ray.get(metrics.get.remote(), timeout=10)
            stages = {k: int(v["rows"] - base.get(k, 0)) for k, v in stats.items()}
            progress({"total": total, "done": done + stages.get("routing", 0), "stages": stages,
                      "elapsed_s": time.perf_counter() - start})
        except Exception:  # noqa: BLE001 - the display must not stop the run
            log.debug("progress report failed", exc_info=True)

    def poll() -> None:
        report()
        while not stop.wait(PROGRESS_EVERY_S):
            report()

    thread = threading.Thread(target=poll, name="twi-curate-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
    report()  # the final counts (not after a failure: nobody shows them)
