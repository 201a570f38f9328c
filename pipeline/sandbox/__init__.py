"""Replay sandbox for model-written code cells.

Level 1 (this package today): :class:`ProcessSandbox`, one fresh hardened child process per
trajectory. A later level (zygote fork-server with full namespaces + seccomp) implements the same
:class:`Sandbox` protocol.
"""

from pipeline.sandbox.base import (
    CELL_STATUSES,
    STDERR_MARKER,
    TRUNCATION_MARKER,
    CellOutcome,
    InputImage,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxUnavailableError,
)
from pipeline.sandbox.process import DEFAULT_REQUIRED_LAYERS, ProcessSandbox, isolation_report

__all__ = [
    "CELL_STATUSES",
    "DEFAULT_REQUIRED_LAYERS",
    "STDERR_MARKER",
    "TRUNCATION_MARKER",
    "CellOutcome",
    "InputImage",
    "ProcessSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxUnavailableError",
    "isolation_report",
]
