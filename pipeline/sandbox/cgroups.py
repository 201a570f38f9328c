"""Per-sandbox cgroups: one memory and one pids cgroup per sandbox slot (parent side).

Layout: ``<controller root>/twi-curate/<pid>-<n>`` where ``<pid>`` is the process that owns the
sandbox (so slots of dead owners can be removed later) and ``<n>`` counts its sandboxes. cgroup
v1 (``/sys/fs/cgroup/memory``, ``/sys/fs/cgroup/pids``: ``memory.limit_in_bytes``, also
``memory.memsw.limit_in_bytes`` when swap accounting exists, ``pids.max``) and v2 (``memory.max``,
``memory.swap.max``, ``pids.max``, controllers enabled through ``cgroup.subtree_control``) are
both supported, per controller. The sandbox child joins the slot (``isolation.join_cgroups``)
before any model code runs; everything it starts inherits it. The memory limit counts the real
memory of the whole trajectory (all its processes, page cache of its work dir), unlike RLIMIT_AS
which is per process and counts address space; the pids limit bounds processes and threads.
Needs root; where a controller is missing or not writable the layer is reported missing.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import threading
import time
from dataclasses import dataclass

GROUP = "twi-curate"
CONTROLLERS = ("memory", "pids")
_counter = itertools.count()
_lock = threading.Lock()


@dataclass(frozen=True)
class Controller:
    name: str  # "memory" | "pids"
    root: str  # mount point of the hierarchy that has this controller
    version: int  # 1 | 2

    @property
    def group(self) -> str:
        return os.path.join(self.root, GROUP)


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every mount, from /proc/self/mountinfo."""
    rows = []
    try:
        with open("/proc/self/mountinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return rows
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point = fields[4].replace("\\040", " ")
        rows.append((mount_point, tail[0], set(tail[2].split(","))))
    return rows


def find_controllers() -> dict[str, Controller]:
    """Where the memory and pids controllers are mounted (v1 preferred per controller, then v2)."""
    found: dict[str, Controller] = {}
    mounts = _mounts()
    for mount_point, fstype, options in mounts:
        if fstype == "cgroup":
            for name in CONTROLLERS:
                if name in options and name not in found:
                    found[name] = Controller(name, mount_point, 1)
    for mount_point, fstype, _ in mounts:
        if fstype != "cgroup2":
            continue
        try:
            with open(os.path.join(mount_point, "cgroup.controllers")) as fh:
                available = set(fh.read().split())
        except OSError:
            continue
        for name in CONTROLLERS:
            if name in available and name not in found:
                found[name] = Controller(name, mount_point, 2)
    return found


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _prepare_group(ctrl: Controller) -> None:
    """Create ``<root>/twi-curate`` (v2: with the controller enabled for its children)."""
    if ctrl.version == 2:
        enabled = _read(os.path.join(ctrl.root, "cgroup.subtree_control")).split()
        if ctrl.name not in enabled:
            _write(os.path.join(ctrl.root, "cgroup.subtree_control"), f"+{ctrl.name}")
    os.makedirs(ctrl.group, exist_ok=True)
    if ctrl.version == 2:
        enabled = _read(os.path.join(ctrl.group, "cgroup.subtree_control")).split()
        if ctrl.name not in enabled:
            _write(os.path.join(ctrl.group, "cgroup.subtree_control"), f"+{ctrl.name}")


def _remove_stale_slots(ctrl: Controller) -> None:
    """Remove empty slots whose owner process is gone (a crashed run cannot clean up)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(ctrl.group):
            owner = name.split("-", 1)[0]
            if not owner.isdigit() or int(owner) == os.getpid():
                continue
            try:
                os.kill(int(owner), 0)
                continue
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(ctrl.group, name))


@functools.lru_cache(maxsize=1)
def available() -> dict[str, bool]:
    """Which controllers this process can use for sandbox slots (creates and removes a test slot)."""
    result = dict.fromkeys(CONTROLLERS, False)
    if os.geteuid() != 0:
        return result
    for name, ctrl in find_controllers().items():
        probe = os.path.join(ctrl.group, f"{os.getpid()}-probe")
        try:
            _prepare_group(ctrl)
            os.makedirs(probe, exist_ok=True)
            result[name] = os.path.isfile(os.path.join(probe, "cgroup.procs"))
        except OSError:
            result[name] = False
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(probe)
    return result


class CgroupSlot:
    """The memory and/or pids cgroup of one sandbox; :meth:`remove` deletes it (idempotent)."""

    def __init__(self, *, memory_bytes: int | None, pids_max: int | None) -> None:
        controllers = find_controllers()
        wanted = {"memory": memory_bytes, "pids": pids_max}
        with _lock:
            name = f"{os.getpid()}-{next(_counter)}"
        self.paths: dict[str, str] = {}
        self._controllers: dict[str, Controller] = {}
        self.errors: list[str] = []
        for ctrl_name, value in wanted.items():
            ctrl = controllers.get(ctrl_name)
            if value is None or ctrl is None:
                continue
            path = os.path.join(ctrl.group, name)
            try:
                _prepare_group(ctrl)
                _remove_stale_slots(ctrl)
                os.makedirs(path, exist_ok=True)
                self.paths[ctrl_name] = path
                self._controllers[ctrl_name] = ctrl
                if ctrl_name == "memory":
                    self._limit_memory(ctrl, path, int(value))
                else:
                    _write(os.path.join(path, "pids.max"), str(int(value)))
            except OSError as exc:
                self.errors.append(f"{ctrl_name} cgroup {path}: {exc}")
                self.paths.pop(ctrl_name, None)
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        self.memory_bytes = memory_bytes if "memory" in self.paths else None
        self.pids_max = pids_max if "pids" in self.paths else None

    @staticmethod
    def _limit_memory(ctrl: Controller, path: str, limit: int) -> None:
        if ctrl.version == 1:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
            memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # memory + swap: no swapping out of the limit
                _write(memsw, str(limit))
        else:
            _write(os.path.join(path, "memory.max"), str(limit))
            swap = os.path.join(path, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")

    def child_config(self) -> dict[str, dict]:
        """controller -> {"procs": file to write a pid to, "path": the slot as /proc/<pid>/cgroup
        shows it, "version": 1 | 2}: what the sandbox child needs to join and verify (JSON)."""
        return {
            name: {
                "procs": os.path.join(path, "cgroup.procs"),
                "path": "/" + os.path.relpath(path, self._controllers[name].root),
                "version": self._controllers[name].version,
            }
            for name, path in self.paths.items()
        }

    def _counter_value(self, controller: str, filename: str, key: str) -> int:
        path = self.paths.get(controller)
        if path is None:
            return 0
        try:
            text = _read(os.path.join(path, filename))
        except OSError:
            return 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        """Processes the kernel killed because the slot hit its memory limit (cumulative)."""
        ctrl = self._controllers.get("memory")
        if ctrl is None:
            return 0
        if ctrl.version == 1:
            return self._counter_value("memory", "memory.oom_control", "oom_kill")
        return self._counter_value("memory", "memory.events", "oom_kill")

    def pids_limit_hits(self) -> int:
        """How often a fork or thread creation failed on the slot's pids limit (cumulative)."""
        return self._counter_value("pids", "pids.events", "max")

    def remove(self, timeout_s: float = 2.0) -> None:
        """Delete the slot's cgroups (their processes must be gone; retries while they exit)."""
        deadline = time.monotonic() + timeout_s
        for name, path in list(self.paths.items()):
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
            self.paths.pop(name, None)
