"""The trajectory's init: namespaces, filesystem, cgroups, then the worker; and the process level.

Init is pid 1 of a fresh PID namespace when the kernel allows it (else a plain process, a child
subreaper, that owns the trajectory's session). :func:`prepare_init` does the part that does not
depend on the trajectory (the zygote level runs it in advance, in a standby init), :func:`run_init`
forks the worker, reaps orphans and, when the worker exits, kills what is left and exits with its
code. :func:`process_main` is the process level's outer process (``runner.py CONFIG_JSON``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from pipeline.sandbox import isolation as iso
from pipeline.sandbox.child.worker import PreforkedWorker, worker_main
from pipeline.sandbox.protocol import EXIT_SETUP_FAILED, EXIT_STATUS


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def _close_pipes(cfg: dict) -> None:
    for key in ("req_fd", "resp_fd"):
        with contextlib.suppress(OSError):
            os.close(int(cfg[key]))


def isolate_filesystem(cfg: dict, layers: dict[str, bool]) -> None:
    """Read-only mounts, private /tmp with the work dir at /tmp/work, masked host directories."""
    layers["read_only_filesystem"] = layers["private_tmp"] = layers["masked_host_dirs"] = False
    if not layers.get("mount_namespace"):
        return
    try:
        layers["read_only_filesystem"] = iso.make_filesystem_read_only([cfg["work_dir"]])
        config_dir = os.environ.get("MPLCONFIGDIR")
        cfg["work_dir"], config_dir = iso.mount_private_tmp(cfg["work_dir"], config_dir)
        os.environ.update(HOME=cfg["work_dir"], TMPDIR=cfg["work_dir"])
        if config_dir:
            os.environ["MPLCONFIGDIR"] = config_dir
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:
            tempfile.tempdir = None  # the zygote may have cached the host's temp dir
        layers["private_tmp"] = True
    except OSError as exc:
        print(f"sandbox: read-only filesystem incomplete: {exc}", file=sys.stderr, flush=True)
        return
    if "masked_host_dirs" in cfg.get("disabled", ()):
        return
    try:
        layers["masked_host_dirs"] = bool(iso.mask_host_dirs(list(cfg.get("mask_dirs") or [])))
    except OSError as exc:
        print(f"sandbox: host directories not masked: {exc}", file=sys.stderr, flush=True)


def prepare_init(cfg: dict, layers: dict[str, bool], *, pid_namespace: bool) -> None:
    """The part of init that does not depend on the trajectory's data.

    Joins (or, at the zygote level, checks) the cgroups, unshares the network, mount, IPC and UTS
    namespaces, builds the filesystem view (read-only, private /tmp with ``cfg["work_dir"]`` at
    /tmp/work, masked host dirs) and mounts a private /proc when it is pid 1 of a PID namespace.
    """
    disabled = set(cfg.get("disabled", ()))
    try:
        if cfg.get("join_cgroups", True):  # the zygote level: born inside (the zygote joined)
            iso.join_cgroups(cfg.get("cgroups") or {})
        layers.update(iso.cgroup_membership(cfg.get("cgroups") or {}))
        layers.update(
            iso.unshare_namespaces(
                user=False if layers.get("user_namespace") else None,
                net="network_namespace" not in disabled,
                pid=False,
                mount="mount_namespace" not in disabled,
                ipc="ipc_namespace" not in disabled,
                uts="uts_namespace" not in disabled,
            )
        )
        for key in ("network_namespace", "mount_namespace", "ipc_namespace", "uts_namespace"):
            layers.setdefault(key, False)
        if layers["uts_namespace"]:
            layers["uts_namespace"] = iso.set_hostname()
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    isolate_filesystem(cfg, layers)
    layers["pid_namespace"] = pid_namespace
    layers["private_proc"] = False
    if pid_namespace and layers.get("mount_namespace"):
        try:
            layers["private_proc"] = iso.mount_private_proc()
        except OSError as exc:
            print(f"sandbox: private /proc unavailable: {exc}", file=sys.stderr, flush=True)
    iso.set_oom_score_adj(-1000)
    if not pid_namespace:
        with contextlib.suppress(OSError):  # orphans of the worker come back here to be reaped
            iso.become_subreaper()


def run_init(
    cfg: dict, layers: dict[str, bool], started: float, *, pid_namespace: bool,
    status_fd: int | None = None, seccomp: object | None = None, worker: PreforkedWorker | None = None,
) -> None:  # fmt: skip
    """Fork the worker (the second fork inside the PID namespace, so the cells never run as
    pid 1) or hand the trajectory to ``worker``, forked in advance with the same settings; reap
    orphans, and when the worker exits kill everything left in the namespace, report the
    worker's exit code on ``status_fd`` (zygote level) and exit with it. Never returns."""
    init_pid = os.getpid()
    if layers.get("private_tmp"):
        limits = cfg.get("limits") or {}
        try:  # the work dir moves onto its own size-limited tmpfs (freed with the namespace)
            size_mb = int(limits.get("work_dir_mb", 256))
            cfg["work_dir"] = iso.mount_work_tmpfs(size_mb, cfg.get("uid"), cfg.get("gid"))
        except OSError as exc:
            print(f"sandbox: work dir not size-limited: {exc}", file=sys.stderr, flush=True)
    worker_pid = -1
    if worker is not None:
        try:
            worker.start(cfg, started)
            worker_pid = worker.pid
        except OSError:
            worker.discard()
    sys.stdout.flush()
    sys.stderr.flush()
    if worker_pid == -1:
        worker_pid = os.fork()
    if worker_pid == 0:
        try:
            if status_fd is not None:
                os.close(status_fd)
            iso.set_parent_death_signal(init_pid)
            worker_main(cfg, layers, started, seccomp)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    code = EXIT_SETUP_FAILED
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == worker_pid:
            code = _exit_code(status)
            break
    if pid_namespace:
        # Everything the cells left behind dies now, before the parent hears the exit code.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
    if status_fd is not None:
        with contextlib.suppress(OSError):
            os.write(status_fd, EXIT_STATUS.pack(code))
    os._exit(code)


def trajectory_init(
    cfg: dict, layers: dict[str, bool], started: float, *, pid_namespace: bool,
    status_fd: int | None = None, seccomp: object | None = None,
) -> None:  # fmt: skip
    """The trajectory's init (:func:`prepare_init` then :func:`run_init`); never returns.

    Runs as pid 1 of a fresh PID namespace when ``pid_namespace``, else as a plain process (a
    child subreaper) that owns the trajectory's session.
    """
    prepare_init(cfg, layers, pid_namespace=pid_namespace)
    run_init(cfg, layers, started, pid_namespace=pid_namespace, status_fd=status_fd, seccomp=seccomp)


# --------------------------------------------------------------------------------------------
# level "process": a fresh interpreter per trajectory
# --------------------------------------------------------------------------------------------
def process_main(cfg: dict, started: float) -> None:
    """Started by ProcessSandbox: outer process -> (new PID namespace) init -> worker (runner.py
    has already re-executed the interpreter with ASLR off when the config asks for it)."""
    disabled = set(cfg.get("disabled", ()))
    layers: dict[str, bool] = {}
    try:
        layers["parent_death_signal"] = iso.set_parent_death_signal(int(cfg["parent_pid"]))
        layers["new_session"] = iso.ensure_new_session()
        want_pid = bool(cfg.get("pid_namespace", True)) and "pid_namespace" not in disabled
        layers.update(iso.unshare_namespaces(net=False, pid=want_pid, mount=False, ipc=False, uts=False))
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    if not layers.get("pid_namespace"):
        trajectory_init(cfg, layers, started, pid_namespace=False)
    init_pid = os.fork()
    if init_pid == 0:
        try:
            iso.set_parent_death_signal(None)
            trajectory_init(cfg, layers, started, pid_namespace=True)
        finally:
            os._exit(EXIT_SETUP_FAILED)
    _close_pipes(cfg)
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
        except InterruptedError:
            continue
        os._exit(_exit_code(status))

