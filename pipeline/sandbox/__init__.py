"""Replay sandbox for model-written code cells.

Two implementations of the :class:`Sandbox` protocol start the same hardened child (namespaces,
read-only filesystem with masked host dirs, unprivileged uid, rlimits, seccomp, cgroups; see
:mod:`pipeline.sandbox.isolation`): :class:`ZygoteSandbox` (level "zygote", the default: forks of
one pre-imported zygote, ~15 ms per trajectory) and :class:`ProcessSandbox` (level "process": a
fresh interpreter per trajectory, ~0.7 s). :mod:`pipeline.sandbox.levels` defines the isolation
levels (strict, standard, weak) and :func:`check_level`, which starts a sandbox and reads back
which layers it really applied.

Layout: :mod:`~pipeline.sandbox.parent` is the parent's side shared by both levels (work dir,
cgroups, wall-clock kill, message validation), :mod:`~pipeline.sandbox.protocol` the wire
protocol both sides import, ``runner.py`` the child's entry point and :mod:`pipeline.sandbox.child`
its code (worker, init, zygote), built on :mod:`~pipeline.sandbox.isolation`. The child imports
none of this ``__init__`` (see ``runner.py``).
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
from pipeline.sandbox.parent import (
    DEFAULT_REQUIRED_LAYERS,
    DISABLE_ENV,
    ChildSandbox,
    disabled_layers,
    isolation_report,
)
from pipeline.sandbox.process import ProcessSandbox
from pipeline.sandbox.zygote import ZygoteSandbox

__all__ = [
    "CELL_STATUSES",
    "DEFAULT_REQUIRED_LAYERS",
    "STDERR_MARKER",
    "TRUNCATION_MARKER",
    "CellOutcome",
    "ChildSandbox",
    "DISABLE_ENV",
    "InputImage",
    "ProcessSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxUnavailableError",
    "ZygoteSandbox",
    "disabled_layers",
    "isolation_report",
]
