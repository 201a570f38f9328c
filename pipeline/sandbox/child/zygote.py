"""Level "zygote": one pre-imported process forks every trajectory's init (:func:`zygote_main`).

The zygote puts each init into a fresh PID namespace itself (unshare, fork, setns back), so there
is no outer process; init reports the worker's exit code on a status pipe. It forks the next
trajectory's init in advance, which prepares its namespaces and filesystem while the current
trajectory runs (:func:`_standby_init`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
import time

from pipeline.sandbox import isolation as iso
from pipeline.sandbox.child.init import prepare_init, run_init, trajectory_init
from pipeline.sandbox.child.worker import PreforkedWorker
from pipeline.sandbox.protocol import (
    EXIT_PROTOCOL,
    EXIT_SETUP_FAILED,
    HANDOFF,
    MSG_READY,
    OP_CONFIG,
    PID_REPLY,
    SPAWN_FDS,
    SPAWN_WITH_PID_NAMESPACE,
    SPAWN_WITHOUT_PID_NAMESPACE,
    recv_message,
    send_message,
)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def _receive_trajectory(fds: list[int]) -> tuple[dict, int]:
    """In a forked init: take the parent's fds (log becomes stdout/stderr) and read the config."""
    req_fd, resp_fd, status_fd, log_fd = fds
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        cfg = recv_message(req_fd)  # written by the parent before it asked for this trajectory
    except ValueError:
        cfg = None
    if not cfg or cfg.get("op") != OP_CONFIG:
        os._exit(EXIT_PROTOCOL)
    cfg.update(req_fd=req_fd, resp_fd=resp_fd, preloaded=True)
    return cfg, status_fd


def _zygote_child(fds: list[int], closing: list[int], pid_namespace: bool, seccomp: object | None) -> None:
    """In a fork made on request: become the trajectory's init; never returns."""
    started = time.monotonic()
    try:
        for fd in closing:  # the zygote's control socket: a cell must never reach it
            os.close(fd)
        layers: dict[str, bool] = {"parent_death_signal": iso.set_parent_death_signal(None)}
        layers["new_session"] = iso.ensure_new_session()
        cfg, status_fd = _receive_trajectory(fds)
        trajectory_init(cfg, layers, started, pid_namespace=pid_namespace, status_fd=status_fd, seccomp=seccomp)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _standby_init(sock, static: dict, closing: list[int], seccomp: object | None) -> None:
    """A pre-forked init, pid 1 of its own PID namespace; never returns.

    Prepares everything that does not depend on the trajectory (:func:`prepare_init`, with the
    sandbox's base directory at /tmp/work) while the previous trajectory runs, then waits for
    the parent's fds. The trajectory's own work dir (a subdirectory of the base) is then
    bind-mounted over /tmp/work, which also hides the base directory, and :func:`run_init` forks
    the worker. This keeps two forks and the namespace and mount set-up off the critical path.
    """
    try:
        for fd in closing:
            os.close(fd)
        layers: dict[str, bool] = {"parent_death_signal": iso.set_parent_death_signal(None)}
        layers["new_session"] = iso.ensure_new_session()
        cfg = {**static, "work_dir": static["base_dir"], "join_cgroups": False}
        prepare_init(cfg, layers, pid_namespace=True)
        worker = None
        if static.get("worker"):  # the sandbox's settings are known: fork and isolate it now
            settings = {**static["worker"], "disabled": static.get("disabled")}
            with contextlib.suppress(OSError):  # else run_init forks it on the spot
                worker = PreforkedWorker(settings, layers, seccomp, [sock.fileno()])  # a copy: it forks
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(sock, 16, SPAWN_FDS)
                break
            except InterruptedError:
                continue
        started = time.monotonic()
        sock.close()
        if not msg or len(fds) != SPAWN_FDS:
            os._exit(0)  # the zygote is gone, or shuts its standby down
        traj, status_fd = _receive_trajectory(fds)
        name = os.path.basename(str(traj["work_dir"]))
        if os.path.dirname(str(traj["work_dir"])) != static["base_dir"]:
            os._exit(EXIT_PROTOCOL)
        if layers.get("private_tmp"):
            traj["work_dir"] = iso.enter_work_dir(name)
        if worker is not None and not worker.matches(traj):
            worker.discard()
            worker = None
        run_init(traj, layers, started, pid_namespace=True, status_fd=status_fd, seccomp=seccomp, worker=worker)
    finally:
        os._exit(EXIT_SETUP_FAILED)


def _fork() -> int:
    """fork() with our buffered output flushed first; -1 if the kernel refuses."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return os.fork()
    except OSError:
        return -1


def _fork_init(fds: list[int], closing: list[int], pidns_fd: int | None, seccomp: object | None) -> int:
    """Fork a trajectory's init on request (``pidns_fd``: into a fresh PID namespace)."""
    in_pidns = False
    if pidns_fd is not None:
        with contextlib.suppress(OSError):
            in_pidns = iso.unshare_pid_for_children()
    pid = _fork()
    if pid == 0:
        _zygote_child(fds, closing, in_pidns, seccomp)
    if in_pidns:
        _restore_pid_namespace(pidns_fd)
    return pid


def _fork_standby(static: dict, closing: list[int], pidns_fd: int, seccomp: object | None):
    """Pre-fork the next trajectory's init into a fresh PID namespace: (pid, socket) or None."""
    try:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        iso.unshare_pid_for_children()
    except OSError:
        return None
    pid = _fork()
    if pid == 0:
        _standby_init(theirs, static, [*closing, ours.fileno()], seccomp)
    _restore_pid_namespace(pidns_fd)
    theirs.close()
    if pid < 0:
        ours.close()
        return None
    return pid, ours


def _restore_pid_namespace(pidns_fd: int) -> None:
    try:
        iso.restore_pid_namespace(pidns_fd)
    except OSError as exc:  # later forks would share the namespace: stop, be restarted
        print(f"zygote: cannot restore its PID namespace: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)


def zygote_main(cfg: dict) -> None:
    """Pre-import once, then serve one trajectory init per spawn request; never returns.

    Control socket protocol (the parent is ZygoteSandbox): after start-up the zygote sends one
    framed JSON ``{"type": "ready", ...}``. Each request is one byte (``P``: new PID namespace,
    ``N``: none) with four fds attached (request pipe, response pipe, status pipe, log file); the
    reply is the init's pid as 4 bytes (-1 if the fork failed). A ``P`` request goes to the
    standby init pre-forked at the top of the loop (see :func:`_standby_init`), else a fork is
    made on the spot. The trajectory's configuration travels on the request pipe, so every loop
    iteration does the same work whatever the trajectory: forks start from the same interpreter
    state, which keeps replays deterministic. EOF on the socket (the parent is gone) ends the
    zygote; its inits then get SIGKILL. (runner.py has already re-executed the interpreter with
    ASLR off when the config asks for it.)
    """
    started = time.monotonic()
    os.chdir("/")
    ctl_fd = int(cfg["ctl_fd"])
    notes = iso.preimport_libraries() if cfg.get("preload", True) else []
    iso.interpreter_paths()  # cached: every fork needs it (masks, policy monitor)
    seccomp = None
    if "seccomp" not in cfg.get("disabled", ()):
        try:
            seccomp = iso.SeccompFilter()
        except OSError as exc:
            notes.append(f"seccomp filter unavailable: {exc}")
    pidns_fd = None
    if "pid_namespace" not in cfg.get("disabled", ()):
        with contextlib.suppress(OSError):
            pidns_fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    # Join the sandbox's cgroups after the imports (their memory stays charged to the owner) and
    # once, so every fork is born inside; never the OOM killer's victim (the cells' worker is).
    iso.join_cgroups(cfg.get("cgroups") or {})
    iso.set_oom_score_adj(-1000)
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        notes.append(f"zygote has {threads} threads before forking")
    send_message(
        ctl_fd,
        {"type": MSG_READY, "pid": os.getpid(), "notes": notes, "startup_ms": (time.monotonic() - started) * 1000.0},
    )
    ctl = socket.socket(fileno=ctl_fd)
    closing = [ctl_fd] + ([pidns_fd] if pidns_fd is not None else [])
    static = {k: cfg.get(k) for k in ("base_dir", "mask_dirs", "cgroups", "disabled", "worker")}
    use_standby = pidns_fd is not None and bool(static["base_dir"])
    standby = None
    gc.collect()
    gc.freeze()  # the pre-imported heap stays shared with the forks (no collector writes to it)
    while True:
        if standby is None and use_standby:
            standby = _fork_standby(static, closing, pidns_fd, seccomp)
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, 16, SPAWN_FDS)
        except InterruptedError:
            continue
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)  # the parent closed the socket or died
        _reap_children()
        pid = -1
        if len(fds) == SPAWN_FDS and msg in (SPAWN_WITH_PID_NAMESPACE, SPAWN_WITHOUT_PID_NAMESPACE):
            if msg == SPAWN_WITH_PID_NAMESPACE and standby is not None:
                standby_pid, standby_sock = standby
                standby = None
                with contextlib.suppress(OSError):  # a dead standby: fork on the spot instead
                    socket.send_fds(standby_sock, [HANDOFF], fds)
                    pid = standby_pid
                standby_sock.close()
            if pid == -1:
                extra = [standby[1].fileno()] if standby is not None else []
                ns_fd = pidns_fd if msg == SPAWN_WITH_PID_NAMESPACE else None
                pid = _fork_init(fds, closing + extra, ns_fd, seccomp)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        try:
            ctl.sendall(PID_REPLY.pack(pid))
        except OSError:
            os._exit(0)

