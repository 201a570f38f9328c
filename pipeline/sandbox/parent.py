"""The parent's side of the replay sandbox, shared by both levels.

:class:`ChildSandbox` prepares a private work directory and the sandbox's cgroups, has a subclass
start the child (:class:`~pipeline.sandbox.process.ProcessSandbox`: ``runner.py`` in a fresh
interpreter; :class:`~pipeline.sandbox.zygote.ZygoteSandbox`: a fork of a pre-imported zygote),
talks to it through a :class:`ChildHandle` (the parent's view of one running child: its pipes,
process group and log), sends the cells one at a time (:mod:`pipeline.sandbox.protocol`),
enforces the wall-clock limits by killing the child's whole process group, and validates every
message that comes back (JSON only; nothing from the child is unpickled, and the only image
format the parent accepts is PNG, whose IHDR size is checked against ``max_output_pixels``
without decoding it).

Layers (see :func:`isolation_report` for what this machine offers and ``last_layers`` for what a
replay applied): separate process with a clean environment; new session; parent-death signal;
no_new_privs; network, PID, mount, IPC and UTS namespaces (empty network, a private /proc, every
mount read-only, /tmp replaced by an empty read-only tmpfs holding only the work dir, the
project directory, $HOME, /root and /home masked); rlimits; unprivileged uid (a distinct uid per
concurrent slot makes RLIMIT_NPROC per-slot); seccomp-bpf; memory and pids cgroups per sandbox
(an OOM kill by the cgroup is reported as status "memory"); wall-clock kill of the whole process
group; capped output; a policy monitor that reports attempts as "forbidden".

``TWI_SANDBOX_DISABLE`` (comma-separated layer names, ``cgroups`` for both cgroup layers) turns
layers off, to see how the pipeline behaves on a weaker machine; the disabled layers are then
reported missing. Valid names: see :data:`DISABLEABLE_LAYERS`.
"""
from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import functools
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.sandbox import cgroups
from pipeline.sandbox.base import (
    STATUS_KILLED,
    STATUS_MEMORY,
    STATUS_OK,
    STATUS_SKIPPED,
    STATUS_TIMEOUT,
    CellOutcome,
    InputImage,
    SandboxError,
    SandboxLimits,
    SandboxUnavailableError,
)
from pipeline.sandbox.isolation import world_traversable
from pipeline.sandbox.protocol import (
    CHILD_STATUSES,
    EXIT_REASONS,
    HEADER,
    IMAGE_NAME,
    MAX_READY_BYTES,
    MSG_CELL,
    MSG_INPUT_GREY,
    MSG_READY,
    OP_EXIT,
    OP_RUN,
    PNG_SIGNATURE,
    ProtocolError,
    decode_message,
    encode_message,
    image_name,
    message_length,
    png_dimensions,
    truncation_note,
)

RUNNER_PATH = Path(__file__).with_name("runner.py")  # the child's entry point
# How every child interpreter starts: no user site-packages (-s), no unsafe sys.path entry such
# as the script's directory (-P), no bytecode written (-B).
INTERPRETER_FLAGS = ("-s", "-P", "-B")
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source tree (masked inside the sandbox)
DISABLE_ENV = "TWI_SANDBOX_DISABLE"
# Layers the child can be told to skip (TWI_SANDBOX_DISABLE); "cgroups" means both cgroup layers.
DISABLEABLE_LAYERS = frozenset(
    {
        "network_namespace",
        "pid_namespace",
        "mount_namespace",
        "ipc_namespace",
        "uts_namespace",
        "masked_host_dirs",
        "seccomp",
        "cgroup_memory",
        "cgroup_pids",
    }
)
NOBODY_UID = 65534
NOGROUP_GID = 65534

# Layers the sandbox refuses to run without, unless constructed with allow_weaker=True.
DEFAULT_REQUIRED_LAYERS = frozenset(
    {
        "separate_process",
        "clean_environment",
        "rlimits",
        "wall_clock_kill",
        "output_cap",
        "network_namespace",
        "unprivileged_uid",
    }
)

_POLL_S = 0.2  # how often a waiting parent checks that the child is still alive
_LOG_TAIL_BYTES = 2048
_REAP_TIMEOUT_S = 5.0  # how long kill() waits for the last process of the session to go
_FINISH_TIMEOUT_S = 2.0  # how long finish() waits for a child that was asked to exit
_SIGNAL_REASONS = {
    signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
    signal.SIGKILL: "killed by SIGKILL (CPU hard limit or out of memory)",
    signal.SIGSEGV: "crashed (SIGSEGV)",
    signal.SIGABRT: "aborted (SIGABRT)",
    signal.SIGBUS: "crashed (SIGBUS)",
    signal.SIGXFSZ: "file size limit exceeded (SIGXFSZ)",
}
_MEMORY_HINTS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "Insufficient memory")


class _ChildGone(Exception):
    pass


class _Deadline(Exception):
    pass


# ------------------------------------------------------------------------------------------------
# capabilities of this machine
# ------------------------------------------------------------------------------------------------
MALLOC_TUNABLES = "glibc.malloc.hugetlb=1"


def child_command(python: str, *args: str) -> list[str]:
    """The command line of a sandbox child: ``runner.py`` with ``args`` (``--probe``, ``--zygote``...)."""
    return [python, *INTERPRETER_FLAGS, str(RUNNER_PATH), *args]


def child_environment(home: str, mpl_dir: str) -> dict[str, str]:
    """The child's complete environment. Nothing is inherited from the parent (API keys...)."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # One thread per library: the run starts one sandbox per CPU (pipeline.ray_plan), so a
        # library's own thread pool only competes with the other sandboxes and actors for the same
        # cores. OpenCV's pool ignores OMP_NUM_THREADS: measured, two sandboxes replaying at once
        # on 2 CPUs used 4-8 % more CPU with its default (one thread per CPU).
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENCV_FOR_THREADS_NUM": "1",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": mpl_dir,
        "OPENCV_IO_MAX_IMAGE_PIXELS": str(1 << 27),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
        # Every trajectory is a fresh process, so each page its cells touch is a first-touch fault
        # (zeroed, charged to the memory cgroup): image buffers of a few megapixels cost thousands
        # of them per cell. Transparent huge pages for malloc'd memory cut that (glibc >= 2.35,
        # THP in "madvise" mode; ignored elsewhere). bench/sandbox.py gives (c) the same setting.
        "GLIBC_TUNABLES": MALLOC_TUNABLES,
    }


@functools.lru_cache(maxsize=4)
def _probe(python: str) -> tuple[tuple[str, bool], ...]:
    """Ask a throw-away child which kernel-level layers it can apply here. A probe that gives no
    answer (timed out on a machine under heavy load, killed) says nothing about the layers: it is
    asked again, with more time, before the layers are reported missing."""
    result: dict = {}
    for timeout in (30, 90, 180):
        try:
            done = subprocess.run(
                child_command(python, "--probe"),
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
            result = json.loads(done.stdout.decode("utf-8") or "{}")
        except (OSError, ValueError, subprocess.SubprocessError):
            result = {}
        if result:
            break
    return tuple(sorted((str(k), bool(v)) for k, v in result.items()))


def disabled_layers(value: str | None = None) -> frozenset[str]:
    """Layers turned off by ``TWI_SANDBOX_DISABLE`` (or ``value``): e.g. ``seccomp,cgroups``."""
    if value is None:
        value = os.environ.get(DISABLE_ENV, "")
    names: set[str] = set()
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        if name == "cgroups":
            names.update(("cgroup_memory", "cgroup_pids"))
        elif name in DISABLEABLE_LAYERS:
            names.add(name)
        else:
            raise ValueError(
                f"{DISABLE_ENV}: unknown layer {name!r}; use any of: cgroups, "
                + ", ".join(sorted(DISABLEABLE_LAYERS))
            )
    return frozenset(names)


def isolation_report(python: str | None = None, disabled: frozenset[str] | set[str] = frozenset()) -> dict[str, bool]:
    """Which isolation layers this machine lets a sandbox child apply (False = missing).

    Probed once per interpreter by a throw-away child (namespaces, mounts, seccomp) plus a test
    cgroup; ``disabled`` layers are reported missing. What a replay really applied is in the
    sandbox's ``last_layers``.
    """
    probe = dict(_probe(python or sys.executable))
    cg = cgroups.available()
    report = {
        "separate_process": True,
        "clean_environment": True,
        "new_session": True,
        "parent_death_signal": probe.get("parent_death_signal", False),
        "no_new_privs": probe.get("no_new_privs", False),
        "network_namespace": probe.get("network_namespace", False),
        "pid_namespace": probe.get("pid_namespace", False),
        "mount_namespace": probe.get("mount_namespace", False),
        "ipc_namespace": probe.get("ipc_namespace", False),
        "uts_namespace": probe.get("uts_namespace", False),
        "read_only_filesystem": probe.get("read_only_filesystem", False),
        "masked_host_dirs": probe.get("masked_host_dirs", False),
        "unprivileged_uid": os.geteuid() == 0,  # only root can switch to another uid
        "rlimits": True,
        "seccomp": probe.get("seccomp", False),
        "cgroup_memory": cg.get("memory", False),
        "cgroup_pids": cg.get("pids", False),
        "wall_clock_kill": True,
        "output_cap": True,
        "policy_monitor": True,
    }
    for layer in disabled:
        report[layer] = False
    if not report["mount_namespace"]:
        report["read_only_filesystem"] = report["masked_host_dirs"] = False
    report["cgroups"] = report["cgroup_memory"] and report["cgroup_pids"]
    return report


def private_host_dirs() -> list[str]:
    """Directories of this host the cells must not read: the project, the cwd, $HOME, /root, /home.

    Sent to the child as ``mask_dirs``; it masks those that
    :func:`~pipeline.sandbox.isolation.maskable_dirs` allows (never a system tree) and re-exposes
    the interpreter found below them (read-only).
    """
    # the source tree, when this is a checkout (not a site-packages install)
    project = [str(PROJECT_ROOT)] if (PROJECT_ROOT / "pyproject.toml").is_file() else []
    dirs = [*project, os.path.expanduser("~"), "/root", "/home"]
    with contextlib.suppress(OSError):
        dirs.insert(1, os.getcwd())
    return list(dict.fromkeys(dirs))


_shared_mpl_lock = threading.Lock()
_shared_mpl_dir: str | None = None


def _matplotlib_config_dir(python: str, warm: bool = True) -> str:
    """One root-owned, world-readable MPLCONFIGDIR per parent process (its font cache is reused).

    ``warm``: build matplotlib's font cache there now, in an interpreter of its own (~1.4 s of
    CPU), unless it is there already. A zygote that preloads matplotlib needs no warming: it
    imports matplotlib before it drops anything, writes the cache into this directory itself and
    every trajectory forks from its loaded font manager."""
    global _shared_mpl_dir
    with _shared_mpl_lock:
        if _shared_mpl_dir is None or not os.path.isdir(_shared_mpl_dir):
            path = tempfile.mkdtemp(prefix="twi-sandbox-mpl-")
            os.chmod(path, 0o755)
            atexit.register(shutil.rmtree, path, True)
            _shared_mpl_dir = path
        if warm and not any(name.startswith("fontlist-") for name in os.listdir(_shared_mpl_dir)):
            _warm_matplotlib_cache(python, _shared_mpl_dir)
        return _shared_mpl_dir


def _warm_matplotlib_cache(python: str, path: str) -> None:
    """Build matplotlib's font cache once, so every child starts identically (and faster)."""
    code = "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [python, *INTERPRETER_FLAGS, "-c", code],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MPLCONFIGDIR": path, "HOME": path},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )


def _input_extension(image: InputImage) -> str:
    ext = os.path.splitext(image.name)[1].lower().lstrip(".")
    if ext and ext.isascii() and ext.isalnum() and len(ext) <= 8:
        return ext
    data = image.data[:16]
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return "img"


def _clean_text(value: object, cap: int, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} is not a string")
    text = value.encode("utf-8", "replace").decode("utf-8")  # drops lone surrogates
    data = text.encode("utf-8")
    if len(data) > cap:
        text = data[:cap].decode("utf-8", "ignore") + truncation_note(len(data) - cap)
    return text


def _live_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in process group ``pgid`` (from /proc)."""
    members = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return members
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            members.append(int(name))
    return members


# ------------------------------------------------------------------------------------------------
# one running child
# ------------------------------------------------------------------------------------------------
def read_log_tail(path: str) -> str:
    """The last lines of a child's log file (its stdout and stderr), "" if unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ChildHandle:
    """The parent's view of one running sandbox child: its pipes, process group and log file."""

    def __init__(self, proc: subprocess.Popen | Any, req_w: int, resp_r: int, log_path: str) -> None:
        self.proc = proc  # a Popen, or anything with its pid/poll/wait/kill (the zygote's init)
        self.req_w = req_w
        self.resp_r = resp_r
        self.log_path = log_path
        self.killed = False
        self.oom_before = 0  # the sandbox cgroup's OOM kills when this child started
        os.set_blocking(req_w, False)
        os.set_blocking(resp_r, False)

    def _wait_fd(self, fd: int, event: int, deadline: float, check_alive: bool = True) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline
            if poller.poll(min(remaining, _POLL_S) * 1000.0):
                return
            if check_alive and self.proc.poll() is not None:
                raise _ChildGone

    def send(self, obj: dict, deadline: float) -> None:
        view = memoryview(encode_message(obj))
        while view:
            self._wait_fd(self.req_w, select.POLLOUT, deadline)
            try:
                n = os.write(self.req_w, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise _ChildGone from exc
            view = view[n:]

    def _read(self, n: int, deadline: float) -> bytes:
        chunks = []
        while n:
            self._wait_fd(self.resp_r, select.POLLIN, deadline)
            try:
                chunk = os.read(self.resp_r, min(n, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise _ChildGone
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read_exact(self, n: int, deadline: float) -> bytes:
        """``n`` raw bytes that follow a message (the input_grey pixels)."""
        return self._read(n, deadline)

    def recv(self, deadline: float, max_bytes: int) -> dict:
        length = message_length(self._read(HEADER.size, deadline), max_bytes)
        return decode_message(self._read(length, deadline))

    def log_tail(self) -> str:
        return read_log_tail(self.log_path)

    def death(self, limits: SandboxLimits) -> tuple[str, str]:
        """(status, reason) for a child that died while running a cell."""
        try:
            rc = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            rc = None
        tail = self.log_tail()
        if rc is None:
            reason = "sandbox process stopped responding"
        elif rc < 0 or rc > 128:
            sig = -rc if rc < 0 else rc - 128
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            reason = f"sandbox process {_SIGNAL_REASONS.get(sig, f'killed by {name}')}"
            if sig == signal.SIGXCPU:
                reason += f" after {limits.cpu_s} s of CPU"
        elif rc in EXIT_REASONS:
            reason = f"sandbox process exited: {EXIT_REASONS[rc]}"
        else:
            reason = f"sandbox process exited with code {rc} while running the cell"
        status = STATUS_MEMORY if any(h in tail for h in _MEMORY_HINTS) else STATUS_KILLED
        if tail:
            reason += "\n[sandbox log]\n" + tail[-1024:]
        return status, reason

    def kill(self) -> None:
        """SIGKILL the whole process group (and with it the PID namespace), then reap. Idempotent."""
        if self.killed:
            return
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        # Return only once every process of the session is dead. Its members all hold the
        # response pipe unless they closed it, so wait for EOF first, then confirm with /proc.
        # (With a PID namespace the orphaned init stays a zombie until the machine's init
        # reaps it; a zombie is not a survivor.)
        deadline = time.monotonic() + _REAP_TIMEOUT_S
        with contextlib.suppress(_Deadline, _ChildGone):
            while True:
                self._wait_fd(self.resp_r, select.POLLIN, deadline, check_alive=False)
                try:
                    if not os.read(self.resp_r, 1 << 16):
                        break
                except BlockingIOError:
                    continue
        while _live_members(self.proc.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.005)
        self._close()

    def finish(self, pid_namespace: bool) -> None:
        """End a child that answered its cells.

        With a PID namespace the worker is asked to exit; its init then kills whatever the cells
        left in the namespace, reaps it and only then exits (or, at the zygote level, reports the
        exit code), so once that is seen nothing of the trajectory runs any more. Without one, or
        when the child does not go promptly, :meth:`kill`.
        """
        if self.killed:
            return
        if pid_namespace:
            with contextlib.suppress(_Deadline, _ChildGone, OSError):
                self.send({"op": OP_EXIT}, time.monotonic() + 1.0)
            try:
                self.proc.wait(timeout=_FINISH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            else:
                # A Popen's outer process waited for init; a zygote's init must have reported.
                if getattr(self.proc, "clean_exit", True):
                    self.killed = True
                    self._close()
                    return
        self.kill()

    def _close(self) -> None:
        for fd in (self.req_w, self.resp_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        close = getattr(self.proc, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------------
class ChildSandbox:
    """Parent side shared by the sandbox levels: one hardened child per :meth:`replay`.

    ``uid``/``gid``: the unprivileged identity the child drops to (a distinct uid per concurrent
    slot makes RLIMIT_NPROC per-slot). ``allow_weaker``: run even if a layer in
    ``required_layers`` is unavailable here (e.g. not root). ``preload``: pre-import the image
    libraries before the privilege drop (turning it off is only for tests of the machinery).
    ``disabled``: layers to leave out (default: ``TWI_SANDBOX_DISABLE``). ``cgroup_memory_mb``: the
    memory limit of the sandbox's cgroup (default ``limits.memory_mb``, like RLIMIT_AS; the cgroup
    counts real memory of every process of the trajectory, RLIMIT_AS address space per process).
    Subclasses implement :meth:`_spawn`.
    """

    # the level's long-lived child imports matplotlib (``preload``) and builds its font cache
    PRELOADING_ZYGOTE = False

    level = "child"
    _child_joins_cgroups = True  # False: the child is born in the cgroups (the zygote joined them)
    _cgroup_resident_tasks = 0  # long-lived processes of the sandbox inside its pids cgroup

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        uid: int = NOBODY_UID,
        gid: int = NOGROUP_GID,
        base_dir: str | os.PathLike[str] | None = None,
        python: str | None = None,
        required_layers: frozenset[str] | set[str] = DEFAULT_REQUIRED_LAYERS,
        allow_weaker: bool = False,
        preload: bool = True,
        disable_aslr: bool = True,
        disabled: frozenset[str] | set[str] | None = None,
        cgroup_memory_mb: int | None = None,
        input_greys: bool = False,
    ) -> None:
        self.limits = limits or SandboxLimits()
        # Also receive each input as the child decoded it, in grey (last_input_greys): the judges
        # then need not decode the input once more (~0.1 s for a 3000-px PNG).
        self.input_greys = input_greys
        self.python = python or sys.executable
        self.required_layers = frozenset(required_layers)
        self.preload = preload
        self.disable_aslr = disable_aslr
        self.disabled = disabled_layers() if disabled is None else frozenset(disabled)
        self.report = isolation_report(self.python, self.disabled)
        missing = sorted(layer for layer in self.required_layers if not self.report.get(layer))
        if missing and not allow_weaker:
            raise SandboxUnavailableError(
                "refusing to run untrusted code: isolation layer(s) unavailable here: "
                + ", ".join(missing)
                + " (pass allow_weaker=True to accept a weaker sandbox)"
            )
        self.can_drop = os.geteuid() == 0
        self.uid = uid if self.can_drop else None
        self.gid = gid if self.can_drop else None
        self._base = tempfile.mkdtemp(prefix="twi-sandbox-", dir=base_dir)
        os.chmod(self._base, 0o711)  # the child may enter its own work dir, not list the others
        if self.can_drop and not world_traversable(self._base):
            shutil.rmtree(self._base, ignore_errors=True)
            raise SandboxError(f"{self._base} is not reachable by uid {uid}; pass another base_dir")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._base, True)  # also at exit
        self.cgroup: cgroups.CgroupSlot | None = None
        memory_mb = cgroup_memory_mb or self.limits.memory_mb
        want_memory = self.report["cgroup_memory"]
        want_pids = self.report["cgroup_pids"]
        if want_memory or want_pids:
            self.cgroup = cgroups.CgroupSlot(
                memory_bytes=int(memory_mb) << 20 if want_memory else None,
                pids_max=self.limits.max_processes + self._cgroup_resident_tasks if want_pids else None,
            )
            self._cgroup_cleanup = weakref.finalize(self, self.cgroup.remove)
        self._mpl_dir = _matplotlib_config_dir(self.python, warm=not (self.preload and self.PRELOADING_ZYGOTE))
        self._mask_dirs = private_host_dirs()
        self._closed = False
        # Run the cells under a pid-1 init in a new PID namespace when the kernel allows it, so
        # that nothing the cells start (even after setsid) outlives the trajectory. Only tests
        # turn this off, to exercise the fallback used where PID namespaces are unavailable.
        self.use_pid_namespace = "pid_namespace" not in self.disabled
        # Diagnostics of the last replay (not part of the Sandbox protocol).
        self.last_pid: int | None = None
        self.last_layers: dict[str, bool] = {}
        self.last_notes: list[str] = []
        self.last_startup_ms: float | None = None
        # With input_greys: per input of the last replay, its 8-bit grey pixels (height x width,
        # read-only) as the child loaded it before any cell ran, or None (not loaded, not started).
        self.last_input_greys: list[Any] = []

    # -- protocol -------------------------------------------------------------------------------
    def replay(self, cells: list[str], images: list[InputImage]) -> list[CellOutcome]:
        if self._closed:
            raise SandboxError("replay() on a closed sandbox")
        cells = list(cells)
        for code in cells:
            if not isinstance(code, str):
                raise TypeError(f"cells must be strings, got {type(code).__name__}")
        if not cells:
            return []
        images = list(images)
        limits = self.limits
        started = time.monotonic()
        total_deadline = started + limits.total_timeout_s
        outcomes: list[CellOutcome] = []
        try:
            work_dir, ctl_dir = self._make_dirs(images)
        except OSError as exc:
            reason = f"not run: cannot prepare the work directory: {exc}"
            return [CellOutcome(STATUS_SKIPPED, "", reason, 0.0, []) for _ in cells]
        child: ChildHandle | None = None
        try:
            try:
                self.last_input_greys = [None] * len(images)
                child = self._spawn(work_dir, ctl_dir, images)
                self._await_ready(child, total_deadline)
                if self.input_greys:
                    self.last_input_greys = self._recv_input_greys(child, images, total_deadline)
            except (_ChildGone, _Deadline, ProtocolError, SandboxError, OSError) as exc:
                reason = self._startup_failure(child, exc)
                return [CellOutcome(STATUS_SKIPPED, "", reason, 0.0, []) for _ in cells]
            for index, code in enumerate(cells):
                outcome, alive = self._run_cell(child, index, code, total_deadline)
                outcomes.append(outcome)
                if not alive:
                    break
            child.finish(bool(self.last_layers.get("pid_namespace")))
        finally:
            if child is not None:
                child.kill()  # no-op after finish()
            shutil.rmtree(work_dir, ignore_errors=True)
            shutil.rmtree(ctl_dir, ignore_errors=True)
        if len(outcomes) < len(cells):
            stopped = len(outcomes) - 1
            reason = f"not run: the sandbox stopped at cell {stopped} ({outcomes[-1].status})"
            outcomes.extend(CellOutcome(STATUS_SKIPPED, "", reason, 0.0, []) for _ in cells[len(outcomes) :])
        return outcomes

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stop()
            if self.cgroup is not None:
                self._cgroup_cleanup()
            self._cleanup()

    def _stop(self) -> None:
        """Stop what the sandbox keeps running between replays (nothing at this level)."""

    def __enter__(self) -> ChildSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- steps ----------------------------------------------------------------------------------
    @staticmethod
    def _input_name(k: int, image: InputImage) -> str:
        return f"input_{k}.{_input_extension(image)}"

    def _make_dirs(self, images: list[InputImage]) -> tuple[str, str]:
        """A fresh 0700 work dir owned by the sandbox uid (inputs inside) and a parent-only ctl dir."""
        work_dir = tempfile.mkdtemp(prefix="traj-", dir=self._base)
        ctl_dir = tempfile.mkdtemp(prefix="ctl-", dir=self._base)
        try:
            for k, image in enumerate(images):
                path = os.path.join(work_dir, self._input_name(k, image))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(bytes(image.data))
                if self.uid is not None:
                    os.chown(path, self.uid, self.gid)
            if self.uid is not None:
                os.chown(work_dir, self.uid, self.gid)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            shutil.rmtree(ctl_dir, ignore_errors=True)
            raise
        return work_dir, ctl_dir

    def _child_config(self, work_dir: str, images: list[InputImage]) -> dict:
        """What the child needs to isolate itself and run the cells (JSON)."""
        return {
            "parent_pid": os.getpid(),
            "uid": self.uid,
            "gid": self.gid,
            "work_dir": work_dir,
            "inputs": [self._input_name(k, im) for k, im in enumerate(images)],
            "input_paths": [im.path for im in images],  # as the trajectory wrote them (mapped)
            "limits": asdict(self.limits),
            "preload": self.preload,
            "disable_aslr": self.disable_aslr,
            "pid_namespace": self.use_pid_namespace,
            "disabled": sorted(self.disabled),
            "mask_dirs": self._mask_dirs,
            "cgroups": self.cgroup.child_config() if self.cgroup is not None else {},
            "join_cgroups": self._child_joins_cgroups,
            "input_greys": self.input_greys,
        }

    def _spawn(self, work_dir: str, ctl_dir: str, images: list[InputImage]) -> ChildHandle:
        raise NotImplementedError

    def _await_ready(self, child: ChildHandle, deadline: float) -> None:
        msg = child.recv(deadline, MAX_READY_BYTES)
        if msg.get("type") != MSG_READY or not isinstance(msg.get("layers"), dict):
            raise ProtocolError("expected a ready message")
        layers = dict.fromkeys(self.report, False)
        layers.update({str(k): bool(v) for k, v in msg["layers"].items()})
        layers.update(separate_process=True, clean_environment=True, wall_clock_kill=True, output_cap=True)
        layers["cgroups"] = layers["cgroup_memory"] and layers["cgroup_pids"]
        notes = msg.get("notes")
        self.last_layers = layers
        self.last_notes = [str(n)[:1000] for n in notes[:100]] if isinstance(notes, list) else []
        startup = msg.get("startup_ms")
        self.last_startup_ms = float(startup) if isinstance(startup, int | float) else None
        # A required layer the machine offers but the child failed to apply: refuse. (Layers the
        # machine lacks were already accepted in __init__ through allow_weaker.)
        missing = sorted(x for x in self.required_layers if self.report.get(x) and not layers.get(x))
        if missing:
            raise SandboxError(
                "sandbox refused to run: layer(s) not applied in the child: " + ", ".join(missing)
            )

    @staticmethod
    def _recv_input_greys(child: ChildHandle, images: list[InputImage], deadline: float) -> list[Any]:
        """The inputs in grey, sent by the child after "ready" and before any cell ran (so nothing
        the trajectory's code does can change them). Each must have the size the input's own
        header declares; anything else breaks the protocol."""
        import numpy as np
        from PIL import Image

        greys: list[Any] = []
        for k, image in enumerate(images):
            msg = child.recv(deadline, MAX_READY_BYTES)
            w, h = msg.get("width"), msg.get("height")
            if msg.get("type") != MSG_INPUT_GREY or msg.get("index") != k or not isinstance(w, int) \
                    or not isinstance(h, int):
                raise ProtocolError(f"expected the grey pixels of input {k}")
            if (w, h) == (0, 0):  # it did not load (the cells see None) or has no grey form
                greys.append(None)
                continue
            try:
                with Image.open(io.BytesIO(bytes(image.data))) as im:  # the header only
                    size = im.size
            except Exception:  # noqa: BLE001
                size = None
            if size != (w, h):
                raise ProtocolError(f"grey input {k} is {w}x{h}, its header says {size}")
            greys.append(np.frombuffer(child.read_exact(w * h, deadline), np.uint8).reshape(h, w))
        return greys

    def _startup_failure(self, child: ChildHandle | None, exc: BaseException) -> str:
        if isinstance(exc, _Deadline):
            return f"not run: the sandbox did not start within the {self.limits.total_timeout_s:g} s limit"
        if isinstance(exc, _ChildGone) and child is not None:
            return "not run: " + self._death(child)[1]
        return f"not run: sandbox start failed: {type(exc).__name__}: {exc}"

    def _death(self, child: ChildHandle) -> tuple[str, str]:
        """(status, reason) for a child that died; "memory" when the sandbox cgroup OOM-killed."""
        status, reason = child.death(self.limits)
        if self.cgroup is not None and self.cgroup.oom_kills() > child.oom_before:
            mb = (self.cgroup.memory_bytes or 0) >> 20
            status = STATUS_MEMORY
            reason = f"out of memory: killed by the sandbox's {mb} MB cgroup memory limit ({reason})"
        return status, reason

    def _max_message_bytes(self) -> int:
        limits = self.limits
        # JSON escaping may grow text up to 6x; base64 grows images by 4/3.
        return 12 * limits.max_output_bytes + (limits.max_file_bytes * 4) // 3 + (1 << 20)

    def _run_cell(
        self, child: ChildHandle, index: int, code: str, total_deadline: float
    ) -> tuple[CellOutcome, bool]:
        """Run one cell; the flag is False when the child is gone (killed, timed out, died)."""
        limits = self.limits
        t0 = time.monotonic()
        cell_deadline = t0 + limits.cell_timeout_s
        deadline = min(cell_deadline, total_deadline)

        def elapsed_ms() -> float:
            return (time.monotonic() - t0) * 1000.0

        try:
            child.send({"op": OP_RUN, "index": index, "code": code}, deadline)
            msg = child.recv(deadline, self._max_message_bytes())
            return self._validate_result(msg, index, elapsed_ms()), True
        except _Deadline:
            duration = elapsed_ms()
            child.kill()
            if cell_deadline <= total_deadline:
                reason = (
                    f"cell {index} exceeded the {limits.cell_timeout_s:g} s wall-clock limit; sandbox killed"
                )
            else:
                reason = (
                    f"trajectory exceeded the {limits.total_timeout_s:g} s wall-clock limit; sandbox killed"
                )
            return CellOutcome(STATUS_TIMEOUT, "", reason, duration, []), False
        except _ChildGone:
            status, reason = self._death(child)
            return CellOutcome(status, "", reason, elapsed_ms(), []), False
        except ProtocolError as exc:
            duration = elapsed_ms()
            child.kill()
            reason = f"sandbox protocol violation: {exc}; sandbox killed"
            return CellOutcome(STATUS_KILLED, "", reason, duration, []), False

    def _validate_result(self, msg: dict, index: int, duration_ms: float) -> CellOutcome:
        limits = self.limits
        if msg.get("type") != MSG_CELL or msg.get("index") != index:
            raise ProtocolError(f"expected the result of cell {index}")
        status = msg.get("status")
        if status not in CHILD_STATUSES:
            raise ProtocolError(f"invalid status {status!r}")
        slack = 256  # room for the truncation marker the child appends
        stdout = _clean_text(msg.get("stdout"), limits.max_output_bytes + slack, "stdout")
        error = _clean_text(msg.get("error"), limits.max_output_bytes + slack, "error")
        raw_images = msg.get("images")
        if not isinstance(raw_images, list) or len(raw_images) > limits.max_images_per_cell:
            raise ProtocolError("invalid image list")
        images: list[tuple[str, bytes]] = []
        dropped: list[str] = []
        total = 0
        for k, item in enumerate(raw_images):
            if not isinstance(item, dict) or not isinstance(item.get("png"), str):
                raise ProtocolError("invalid image entry")
            try:
                data = base64.b64decode(item["png"], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError("invalid base64 image") from exc
            if not data.startswith(PNG_SIGNATURE):
                raise ProtocolError("image is not a PNG")
            total += len(data)
            if total > limits.max_file_bytes:
                raise ProtocolError("images exceed the per-cell byte budget")
            name = item.get("name")
            if not isinstance(name, str) or not IMAGE_NAME.match(name):
                name = image_name(index, k, "image")
            size = png_dimensions(data)
            if size is None:
                dropped.append(f"[image {name} dropped: malformed PNG header]")
            elif size[0] * size[1] > limits.max_output_pixels:
                dropped.append(
                    f"[image {name} dropped: {size[0]}x{size[1]} exceeds {limits.max_output_pixels} pixels]"
                )
            else:
                images.append((name, data))
        if dropped:  # checked from the header only: a decompression bomb is never decoded here
            sep = "\n" if stdout and not stdout.endswith("\n") else ""
            stdout = stdout + sep + "\n".join(dropped) + "\n"
        return CellOutcome(status, stdout, error if status != STATUS_OK else "", duration_ms, images)
