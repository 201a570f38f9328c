"""Replay sandbox, level "zygote": a pre-imported fork server per sandbox.

:class:`ZygoteSandbox` starts one long-lived zygote (``runner.py --zygote``, the child side is
:mod:`pipeline.sandbox.child.zygote`) with a clean
environment (nothing of the parent's environment, fixed ``PYTHONHASHSEED``, one BLAS thread),
which imports the image libraries once, warms their lazy parts, builds the seccomp filter and
joins the sandbox's cgroups (its forks are born inside). Each trajectory's init is a fork of the
zygote in a fresh PID namespace, made in advance while the previous trajectory runs; it applies
the same layers as the process level (network/mount/IPC/UTS namespaces, read-only filesystem,
masked host dirs, private /proc), then binds the trajectory's work dir and forks the worker, which
sets rlimits, drops privileges, loads the seccomp filter and runs the cells statefully with the
same worker code (statuses, image capture, output caps, policy monitor). Everything else (work
dir, wall-clock kill, message validation, cgroup OOM classification) is the shared parent side in
:class:`~pipeline.sandbox.parent.ChildSandbox`.

Per trajectory this costs two forks of a warm process instead of a fresh interpreter that imports
numpy, OpenCV, PIL, matplotlib, SciPy and scikit-image (~15-25 ms instead of ~0.7-1 s;
``python bench/sandbox_overhead.py``).

The zygote holds no secrets (clean environment, never given credentials) and is never reachable
from a cell: init closes the control socket before anything else. If the zygote dies (killed, out
of memory), the next :meth:`~ZygoteSandbox.replay` starts a new one transparently; a trajectory that
was running when it died is reported ``killed``. If the owner process dies, the zygote sees EOF
on its control socket and exits, and every init it forked gets SIGKILL (parent-death signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import asdict

from pipeline.sandbox.base import InputImage, SandboxError, SandboxLimits
from pipeline.sandbox.parent import ChildHandle, ChildSandbox, child_command, child_environment, read_log_tail
from pipeline.sandbox.protocol import (
    EXIT_STATUS,
    HEADER,
    MAX_CONFIG_BYTES,
    MAX_READY_BYTES,
    MSG_READY,
    OP_CONFIG,
    PID_REPLY,
    SPAWN_WITH_PID_NAMESPACE,
    SPAWN_WITHOUT_PID_NAMESPACE,
    ProtocolError,
    decode_message,
    encode_message,
    message_length,
)

_SPAWN_TIMEOUT_S = 10.0  # how long the zygote may take to fork


START_ATTEMPTS = 3  # a zygote that dies while it starts is started again, at most this often


class _ZygoteGone(Exception):
    pass


class _ForkedInit:
    """The parent's view of a trajectory's init forked by the zygote (not our child: no waitpid).

    Liveness and exit code come from the status pipe: 4 bytes (the worker's exit code, 128+signal
    for a signal, sent once init has killed and reaped everything else in its PID namespace), or
    EOF without them when init itself was killed. Mimics the parts of ``Popen`` the parent uses.
    """

    def __init__(self, pid: int, status_r: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.clean_exit = False  # init reported the exit code itself
        self._fd: int | None = status_r
        self._buf = b""
        os.set_blocking(status_r, False)

    def _collect(self) -> bool:
        if self._fd is None:
            return self.returncode is not None
        try:
            data = os.read(self._fd, 64)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        self._buf += data
        if len(self._buf) >= EXIT_STATUS.size:
            (self.returncode,) = EXIT_STATUS.unpack(self._buf[: EXIT_STATUS.size])
            self.clean_exit = True
            return True
        if not data:
            self.returncode = 128 + signal.SIGKILL  # died without reporting: killed
            return True
        return False

    def poll(self) -> int | None:
        if self.returncode is None:
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None and not self._collect():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(f"trajectory init {self.pid}", timeout or 0.0)
            if self._fd is None:
                break
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            poller.poll(None if remaining is None else max(1, int(remaining * 1000)))
        return self.returncode if self.returncode is not None else 128 + signal.SIGKILL

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _Zygote:
    """One running zygote: its process, the control socket, its log."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, log_path: str) -> None:
        self.proc = proc
        self.sock = sock
        self.log_path = log_path
        self.notes: list[str] = []
        self.startup_ms: float | None = None

    @classmethod
    def start(cls, python: str, env: dict[str, str], log_path: str, config: dict, timeout_s: float) -> _Zygote:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    child_command(python, "--zygote", json.dumps({**config, "ctl_fd": child_sock.fileno()})),
                    env=env,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(child_sock.fileno(),),
                    start_new_session=True,
                    close_fds=True,
                )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        zygote = cls(proc, parent_sock, log_path)
        try:
            zygote._await_ready(timeout_s)
        except BaseException:
            zygote.stop()
            raise
        return zygote

    def log_tail(self) -> str:
        return read_log_tail(self.log_path)

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks, need = [], n
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while need:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if not poller.poll(min(remaining, 0.2) * 1000.0):
                if self.proc.poll() is not None:
                    raise _ZygoteGone
                continue
            try:
                chunk = self.sock.recv(need)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _ZygoteGone from exc
            if not chunk:
                raise _ZygoteGone
            chunks.append(chunk)
            need -= len(chunk)
        return b"".join(chunks)

    def _await_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            header = self._recv_exact(HEADER.size, deadline)
            try:
                length = message_length(header, MAX_READY_BYTES)
            except ProtocolError as exc:
                raise SandboxError("the sandbox zygote sent an oversized ready message") from exc
            msg = decode_message(self._recv_exact(length, deadline))
        except (TimeoutError, _ZygoteGone, ProtocolError) as exc:
            what = "did not start in time" if isinstance(exc, TimeoutError) else "failed to start"
            raise SandboxError(f"the sandbox zygote {what}: {self.log_tail()[-1500:]}") from exc
        if msg.get("type") != MSG_READY:
            raise SandboxError("the sandbox zygote sent no ready message")
        notes = msg.get("notes")
        self.notes = [str(n)[:1000] for n in notes[:100]] if isinstance(notes, list) else []
        startup = msg.get("startup_ms")
        self.startup_ms = float(startup) if isinstance(startup, int | float) else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def spawn(self, config: dict, log_path: str, pid_namespace: bool) -> tuple[int, int, int, int]:
        """Fork a trajectory's init; returns (pid, request pipe, response pipe, status pipe)."""
        data = encode_message(config)
        if len(data) > MAX_CONFIG_BYTES:
            raise SandboxError(f"trajectory configuration too large ({len(data)} bytes)")
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        status_r, status_w = os.pipe()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        ok = False
        try:
            os.write(req_w, data)  # fits the empty pipe: never blocks
            flag = SPAWN_WITH_PID_NAMESPACE if pid_namespace else SPAWN_WITHOUT_PID_NAMESPACE
            try:
                socket.send_fds(self.sock, [flag], [req_r, resp_w, status_w, log_fd])
                (pid,) = PID_REPLY.unpack(self._recv_exact(PID_REPLY.size, time.monotonic() + _SPAWN_TIMEOUT_S))
            except (OSError, TimeoutError) as exc:
                raise _ZygoteGone from exc
            if pid <= 0:
                raise SandboxError("the sandbox zygote could not fork (out of processes or memory?)")
            ok = True
            return pid, req_w, resp_r, status_r
        finally:
            for fd in (req_r, resp_w, status_w, log_fd):
                os.close(fd)
            if not ok:
                for fd in (req_w, resp_r, status_r):
                    os.close(fd)

    def stop(self) -> None:
        """Close the control socket (the zygote exits on EOF); SIGKILL it if it does not."""
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)


class ZygoteSandbox(ChildSandbox):
    """Level "zygote": every trajectory is a hardened fork of one pre-imported zygote.

    Same constructor arguments as :class:`~pipeline.sandbox.process.ProcessSandbox`, plus
    ``start_timeout_s`` for the zygote's start-up (imports; a cold disk cache takes seconds). The
    zygote starts in the constructor (a :class:`SandboxError` there means it cannot start at
    all); later deaths are repaired by the next :meth:`replay`. ``zygote_starts`` counts starts.
    """

    level = "zygote"
    _child_joins_cgroups = False
    _cgroup_resident_tasks = 2  # the zygote itself and the next trajectory's pre-forked init
    PRELOADING_ZYGOTE = True

    def __init__(self, limits: SandboxLimits | None = None, *, start_timeout_s: float = 180.0, **kwargs) -> None:
        super().__init__(limits, **kwargs)
        self.start_timeout_s = start_timeout_s
        self.zygote_starts = 0
        self.zygote_notes: list[str] = []
        self.zygote_startup_ms: float | None = None
        self._zygote: _Zygote | None = None
        self._zygote_finalizer: weakref.finalize | None = None
        try:
            self._ensure_zygote()
        except BaseException:
            self.close()
            raise

    @property
    def zygote_pid(self) -> int | None:
        """Pid of the running zygote (None before the first start or after close())."""
        return self._zygote.proc.pid if self._zygote is not None and self._zygote.alive() else None

    def _ensure_zygote(self) -> _Zygote:
        zygote = self._zygote
        if zygote is not None and zygote.alive():
            return zygote
        self._stop()
        config = {
            "disable_aslr": self.disable_aslr,
            "disabled": sorted(self.disabled),
            "preload": self.preload,
            "cgroups": self.cgroup.child_config() if self.cgroup is not None else {},
            # for the pre-forked init of the next trajectory (see pipeline.sandbox.child.zygote)
            "base_dir": self._base,
            "mask_dirs": self._mask_dirs,
            # settings of every trajectory's worker, so the standby init can fork it in advance
            "worker": {"limits": asdict(self.limits), "uid": self.uid, "gid": self.gid},
        }
        for attempt in range(START_ATTEMPTS):
            try:
                zygote = _Zygote.start(
                    self.python,
                    child_environment(self._base, self._mpl_dir),
                    os.path.join(self._base, "zygote.log"),
                    config,
                    self.start_timeout_s,
                )
                break
            except SandboxError as exc:
                # A zygote killed while it starts (a fault, the OOM killer) is started again; one
                # that cannot start (its log says why) fails every attempt and the error stands.
                if not isinstance(exc.__cause__, _ZygoteGone) or attempt == START_ATTEMPTS - 1:
                    raise
        self._zygote = zygote
        self._zygote_finalizer = weakref.finalize(self, zygote.stop)
        self.zygote_starts += 1
        self.zygote_notes = zygote.notes
        self.zygote_startup_ms = zygote.startup_ms
        return zygote

    def _spawn(self, work_dir: str, ctl_dir: str, images: list[InputImage]) -> ChildHandle:
        config = {"op": OP_CONFIG, **self._child_config(work_dir, images)}
        log_path = os.path.join(ctl_dir, "child.log")
        for attempt in range(2):
            zygote = self._ensure_zygote()
            oom_before = self.cgroup.oom_kills() if self.cgroup is not None else 0
            try:
                pid, req_w, resp_r, status_r = zygote.spawn(config, log_path, self.use_pid_namespace)
                break
            except _ZygoteGone:
                tail = zygote.log_tail()
                self._stop()
                if attempt:
                    raise SandboxError(f"the sandbox zygote died while forking a trajectory: {tail[-1000:]}") from None
        self.last_pid = pid
        child = ChildHandle(_ForkedInit(pid, status_r), req_w, resp_r, log_path)
        child.oom_before = oom_before
        return child

    def _stop(self) -> None:
        if self._zygote_finalizer is not None:
            self._zygote_finalizer()  # stops the zygote once
            self._zygote_finalizer = None
        self._zygote = None
