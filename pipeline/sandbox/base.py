"""The replay-sandbox interface shared by every isolation level.

The replay stage only sees :class:`Sandbox`, :class:`SandboxLimits`, :class:`InputImage` and
:class:`CellOutcome`; level "process" (:class:`pipeline.sandbox.process.ProcessSandbox`, one fresh
child process per trajectory) and level "zygote" (:class:`pipeline.sandbox.zygote.ZygoteSandbox`)
implement the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.sandbox.protocol import (  # what the child reports, defined with the wire protocol
    STATUS_ERROR,
    STATUS_FORBIDDEN,
    STATUS_MEMORY,
    STATUS_OK,
)
from pipeline.sandbox.protocol import STDERR_MARKER as STDERR_MARKER
from pipeline.sandbox.protocol import TRUNCATION_MARKER as TRUNCATION_MARKER

# Status of one replayed cell (schemas.sample.CELL_STATUSES adds "replay_env", which only the replay
# stage sets, on an "error" the replay environment caused: see pipeline.stages.replay). The child reports
# ok, error, memory and forbidden (protocol.CHILD_STATUSES); the parent decides the others.
STATUS_TIMEOUT = "timeout"
STATUS_KILLED = "killed"
STATUS_SKIPPED = "skipped"
CELL_STATUSES = (
    STATUS_OK,
    STATUS_ERROR,
    STATUS_TIMEOUT,
    STATUS_MEMORY,
    STATUS_KILLED,
    STATUS_FORBIDDEN,
    STATUS_SKIPPED,
)


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the replayed code)."""


class SandboxUnavailableError(SandboxError):
    """A required isolation layer cannot be applied on this machine."""


@dataclass(frozen=True)
class SandboxLimits:
    cell_timeout_s: float = 20.0  # wall clock per cell
    total_timeout_s: float = 90.0  # wall clock per trajectory (includes interpreter start-up)
    memory_mb: int = 3072  # RLIMIT_AS; the pre-imported libraries take ~0.5 GB of address space
    cpu_s: int = 60  # RLIMIT_CPU (soft; SIGKILL one second later)
    max_output_bytes: int = 64 * 1024  # per-cell stdout+stderr kept; excess truncated with a marker
    max_file_bytes: int = 64 * 1024 * 1024  # RLIMIT_FSIZE; also the per-cell budget of captured PNG bytes
    max_images_per_cell: int = 8
    max_processes: int = 64  # RLIMIT_NPROC, counted per uid and including threads
    work_dir_mb: int = 256  # size of the trajectory's tmpfs work dir; writes beyond it fail (ENOSPC)
    max_output_pixels: int = 40_000_000  # returned images larger than this (PNG IHDR) are dropped

    def __post_init__(self) -> None:
        for name in ("cell_timeout_s", "total_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0")
        for name in (
            "memory_mb", "cpu_s", "max_output_bytes", "max_file_bytes", "max_processes", "work_dir_mb",
            "max_output_pixels",
        ):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SandboxLimits.{name} must be >= 1")
        if self.max_images_per_cell < 0:
            raise ValueError("SandboxLimits.max_images_per_cell must be >= 0")


@dataclass(frozen=True)
class InputImage:
    name: str  # original file name, e.g. "math-0001.png" (the extension tells the format)
    data: bytes  # encoded image bytes
    # The path the trajectory's code uses for it (Thyme: the absolute path from its prompt), if
    # any: the sandbox maps it to the copy in the work dir.
    path: str = ""


@dataclass
class CellOutcome:
    status: str  # one of CELL_STATUSES
    stdout: str  # stdout (+ STDERR_MARKER + stderr when stderr is non-empty), capped
    error: str  # traceback for error/forbidden/memory, reason for timeout/killed/skipped, "" if ok
    duration_ms: float
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, PNG bytes), deterministic order


@runtime_checkable
class Sandbox(Protocol):
    level: str  # e.g. "process"

    def replay(self, cells: list[str], images: list[InputImage]) -> list[CellOutcome]:
        """Run ``cells`` in order in one fresh isolated interpreter; ``len(result) == len(cells)``."""
        ...

    def close(self) -> None: ...
