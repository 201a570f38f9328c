"""Isolation levels, and the check that a machine's sandbox reaches the configured one.

Levels (each includes the one before):

* ``weak``: a separate process with a clean environment, rlimits, the wall-clock kill and the
  output cap. Enough to survive buggy code, not hostile code.
* ``standard``: + network, PID, mount, IPC and UTS namespaces, read-only filesystem with the
  project, home and /root masked, unprivileged uid, no_new_privs, parent-death signal, seccomp and
  the policy monitor. Needs root (or unprivileged user namespaces for the namespace part).
* ``strict``: + per-sandbox cgroup memory and pids limits (root, cgroup memory+pids controllers).

:func:`check_level` starts a real sandbox of the configured kind, replays a probe cell and reads
back which layers the child applied and what the cell observes from inside; ``twi-curate sandbox
check`` prints it and ``twi-curate run`` refuses to start below ``replay.min_sandbox_level``
unless ``--allow-weak-sandbox``. ``TWI_SANDBOX_DISABLE=seccomp,cgroups`` (any layer names of
:data:`~pipeline.sandbox.parent.DISABLEABLE_LAYERS`) simulates a weaker machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.sandbox.base import Sandbox, SandboxError, SandboxLimits
from pipeline.sandbox.parent import DISABLE_ENV, PROJECT_ROOT, disabled_layers
from pipeline.sandbox.process import ProcessSandbox
from pipeline.sandbox.zygote import ZygoteSandbox

if TYPE_CHECKING:
    from pipeline.config import ReplayConfig

UID_BASE, UID_RANGE = 60000, 5000
SANDBOX_KINDS = {"zygote": ZygoteSandbox, "process": ProcessSandbox}

# Every layer `sandbox check` reports, in display order, with its label.
LAYER_LABELS: dict[str, str] = {
    "separate_process": "separate process, clean environment",
    "network_namespace": "network namespace (no interfaces but lo)",
    "pid_namespace": "PID namespace (cells under their own init)",
    "mount_namespace": "mount namespace",
    "ipc_namespace": "IPC namespace",
    "uts_namespace": "UTS namespace (own hostname)",
    "read_only_filesystem": "read-only filesystem, private /tmp",
    "masked_host_dirs": "masked /root, home and project dirs",
    "unprivileged_uid": "unprivileged uid",
    "rlimits": "rlimits (memory, CPU, files, processes)",
    "no_new_privs": "no_new_privs",
    "parent_death_signal": "parent-death signal",
    "seccomp": "seccomp-bpf syscall filter",
    "cgroup_memory": "cgroup memory limit",
    "cgroup_pids": "cgroup pids limit",
    "wall_clock_kill": "wall-clock kill",
    "output_cap": "output cap",
    "policy_monitor": "policy monitor (reports attempts)",
}
_WEAK = frozenset({"separate_process", "clean_environment", "rlimits", "wall_clock_kill", "output_cap"})
_STANDARD = _WEAK | {
    "network_namespace", "pid_namespace", "mount_namespace", "ipc_namespace", "uts_namespace",
    "read_only_filesystem", "masked_host_dirs", "unprivileged_uid", "no_new_privs",
    "parent_death_signal", "seccomp", "policy_monitor",
}  # fmt: skip
LEVELS: dict[str, frozenset[str]] = {
    "weak": _WEAK,
    "standard": frozenset(_STANDARD),
    "strict": frozenset(_STANDARD | {"cgroup_memory", "cgroup_pids"}),
}
LEVEL_ORDER = ("weak", "standard", "strict")

_HINTS = {
    "network_namespace": "namespaces",
    "pid_namespace": "namespaces",
    "mount_namespace": "namespaces",
    "ipc_namespace": "namespaces",
    "uts_namespace": "namespaces",
    "read_only_filesystem": "namespaces",
    "masked_host_dirs": "namespaces",
    "unprivileged_uid": "root",
    "parent_death_signal": "root",
    "no_new_privs": "root",
    "seccomp": "seccomp",
    "cgroup_memory": "cgroups",
    "cgroup_pids": "cgroups",
}
_HINT_TEXT = {
    "root": "run as root (the sandbox drops to an unprivileged uid per replay slot)",
    "namespaces": "run as root, or enable unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0)",
    "seccomp": "install libseccomp2 (libseccomp.so.2) on a kernel with CONFIG_SECCOMP_FILTER",
    "cgroups": "run as root with the cgroup memory and pids controllers mounted "
    "(v1 /sys/fs/cgroup/memory and /sys/fs/cgroup/pids, or v2 with memory and pids enabled)",
}

# Runs inside the sandbox: what the kernel shows the cell, to confirm the reported layers.
_PROBE_CELL = """
import json, os, socket
seen = {"uid": os.getuid(), "pid": os.getpid(), "hostname": os.uname().nodename}
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
seen["no_new_privs"] = status.get("NoNewPrivs", "").strip() == "1"
seen["seccomp"] = status.get("Seccomp", "").strip() == "2"
seen["interfaces"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
seen["cgroup"] = open("/proc/self/cgroup").read()
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    seen["inet_socket"] = "allowed"
except OSError as exc:
    seen["inet_socket"] = exc.errno
def readable(path):
    try:
        os.listdir(path)
        return True
    except OSError:
        return False
seen["readable"] = {p: readable(p) for p in %(dirs)r}
print(json.dumps(seen))
"""


def sandbox_limits(cfg: ReplayConfig) -> SandboxLimits:
    return SandboxLimits(
        cell_timeout_s=cfg.cell_timeout_s, total_timeout_s=cfg.total_timeout_s, memory_mb=cfg.memory_mb
    )


def sandbox_uid() -> int:
    """A uid of its own for this actor's sandbox, so RLIMIT_NPROC (counted per uid) of one
    fork-bombing trajectory cannot starve the sandboxes of other actors on the node."""
    key = str(os.getpid())
    try:
        import ray

        if ray.is_initialized():  # get_runtime_context() would start a local Ray otherwise
            key = ray.get_runtime_context().get_actor_id() or key
    except Exception:  # noqa: BLE001 - no Ray at all
        pass
    return UID_BASE + int(hashlib.sha256(key.encode()).hexdigest(), 16) % UID_RANGE


def make_sandbox(
    kind: str,
    limits: SandboxLimits,
    *,
    uid: int,
    min_level: str = "strict",
    allow_weaker: bool = False,
    disabled: frozenset[str] | None = None,
    input_greys: bool = False,
) -> Sandbox:
    """A sandbox of ``kind`` ("zygote" or "process") that refuses to start below ``min_level``
    (:class:`~pipeline.sandbox.base.SandboxUnavailableError`) unless ``allow_weaker``;
    ``input_greys``: also hand back each input in grey (``last_input_greys``)."""
    if kind not in SANDBOX_KINDS:
        raise ValueError(f"unknown sandbox kind {kind!r}; use one of {sorted(SANDBOX_KINDS)}")
    if min_level not in LEVELS:
        raise ValueError(f"unknown sandbox level {min_level!r}; use one of {list(LEVEL_ORDER)}")
    cls = SANDBOX_KINDS[kind]
    return cls(
        limits, uid=uid, gid=uid, required_layers=LEVELS[min_level], allow_weaker=allow_weaker, disabled=disabled,
        input_greys=input_greys,
    )


def achieved_level(layers: dict[str, bool]) -> str | None:
    """The highest level whose layers are all active (None: not even weak)."""
    best = None
    for level in LEVEL_ORDER:
        if all(layers.get(layer) for layer in LEVELS[level]):
            best = level
    return best


def level_of_layer(layer: str) -> str:
    """The lowest level that requires ``layer``."""
    return next((level for level in LEVEL_ORDER if layer in LEVELS[level]), "-")


@dataclass
class SandboxCheck:
    """What :func:`check_level` found. ``layers``: applied by the child *and* confirmed inside."""

    kind: str
    required: str
    layers: dict[str, bool] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    disabled: tuple[str, ...] = ()

    @property
    def achieved(self) -> str | None:
        return None if self.error else achieved_level(self.layers)

    @property
    def ok(self) -> bool:
        achieved = self.achieved
        return achieved is not None and LEVEL_ORDER.index(achieved) >= LEVEL_ORDER.index(self.required)

    @property
    def missing(self) -> list[str]:
        """Layers the required level needs that are not active."""
        return [layer for layer in LAYER_LABELS if layer in LEVELS[self.required] and not self.layers.get(layer)]

    def summary(self) -> str:
        return (
            f"{self.kind} sandbox reaches level {self.achieved or 'none'}; "
            f"replay.min_sandbox_level is {self.required}"
        )

    def advice(self) -> str:
        """Why the check failed and what to do, in a few lines."""
        lines = [self.summary() + "."]
        if self.error:
            lines.append(f"The sandbox could not run a probe cell: {self.error}")
        if self.missing:
            lines.append("Missing layers: " + ", ".join(self.missing) + ".")
            for hint in dict.fromkeys(_HINTS[m] for m in self.missing if m in _HINTS):
                lines.append(f"  - {_HINT_TEXT[hint]}")
        if self.disabled:
            lines.append(f"  - {DISABLE_ENV} turns off: {', '.join(self.disabled)} (unset it)")
        lines.append(
            "Or lower replay.min_sandbox_level in the config, or pass --allow-weak-sandbox to run "
            "untrusted code with the weaker isolation anyway (not recommended)."
        )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "required": self.required,
            "achieved": self.achieved,
            "ok": self.ok,
            "layers": dict(self.layers),
            "disabled": list(self.disabled),
            "error": self.error,
        }


def _confirm(layers: dict[str, bool], seen: dict[str, Any], dirs: list[str]) -> dict[str, bool]:
    """Keep a reported layer only if what the cell saw agrees with it."""
    confirmed = dict(layers)
    checks = {
        "unprivileged_uid": seen.get("uid") != 0,
        "pid_namespace": seen.get("pid") == 2,
        "uts_namespace": seen.get("hostname") == "sandbox",
        "network_namespace": seen.get("interfaces") == ["lo"],
        "no_new_privs": seen.get("no_new_privs") is True,
        "seccomp": seen.get("seccomp") is True and seen.get("inet_socket") == 1,  # EPERM
        "masked_host_dirs": not any(seen.get("readable", {}).get(d, True) for d in dirs),
        "cgroup_memory": "twi-curate" in str(seen.get("cgroup", "")),
        "cgroup_pids": "twi-curate" in str(seen.get("cgroup", "")),
    }
    for layer, ok in checks.items():
        confirmed[layer] = bool(confirmed.get(layer)) and ok
    return confirmed


def check_level(cfg: ReplayConfig, *, disabled: frozenset[str] | None = None) -> tuple[bool, SandboxCheck]:
    """Start a sandbox as configured (``cfg.sandbox``), run a probe cell, and compare the layers
    really applied with ``cfg.min_sandbox_level``. Returns ``(ok, report)``; never raises for a
    sandbox problem (the report says what went wrong)."""
    disabled = disabled_layers() if disabled is None else frozenset(disabled)
    report = SandboxCheck(kind=cfg.sandbox, required=cfg.min_sandbox_level, disabled=tuple(sorted(disabled)))
    dirs = [d for d in dict.fromkeys([str(PROJECT_ROOT), "/root"]) if os.path.isdir(d)]
    try:
        box = make_sandbox(
            cfg.sandbox, sandbox_limits(cfg), uid=sandbox_uid(), min_level="weak", allow_weaker=True, disabled=disabled
        )
    except (SandboxError, OSError) as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        return False, report
    try:
        out = box.replay([_PROBE_CELL % {"dirs": dirs}], [])
        layers = dict(box.last_layers)
    finally:
        box.close()
    outcome = out[0]
    try:
        # "forbidden": the policy monitor reports the probe's deliberate AF_INET socket attempt
        seen = json.loads(outcome.stdout.split("\n", 1)[0]) if outcome.status in ("ok", "forbidden") else None
    except ValueError:
        seen = None
    if not isinstance(seen, dict):
        report.error = f"probe cell {outcome.status}: {(outcome.error or outcome.stdout).strip()[-600:]}"
        report.layers = {layer: False for layer in LAYER_LABELS}
        return False, report
    report.observed = seen
    report.layers = {layer: _confirm(layers, seen, dirs).get(layer, False) for layer in LAYER_LABELS}
    report.layers["clean_environment"] = bool(layers.get("clean_environment"))
    return report.ok, report


class SandboxLevelError(SandboxError):
    """The sandbox on this machine is below ``replay.min_sandbox_level``."""
