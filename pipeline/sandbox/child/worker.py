"""The worker: the process that runs a trajectory's cells (pid 2 of its PID namespace).

It applies the worker's layers (rlimits, no_new_privs, the unprivileged uid, then the seccomp
filter), preloads the inputs into the cells' namespace, installs the capture hooks and the policy
monitor, says ready and then runs one cell per request (:meth:`Worker.serve`). At the zygote
level a standby init forks it in advance (:class:`PreforkedWorker`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import socket
import sys
import time

from pipeline.sandbox import isolation as iso
from pipeline.sandbox.child.capture import ndarray_to_pil, safe_stem
from pipeline.sandbox.child.cell import CellRunner
from pipeline.sandbox.child.paths import PathMap
from pipeline.sandbox.child.policy import PolicyMonitor
from pipeline.sandbox.protocol import (
    EXIT_PROTOCOL,
    EXIT_SETUP_FAILED,
    HANDOFF,
    HANDOFF_WORKER_FDS,
    MSG_INPUT_GREY,
    MSG_READY,
    OP_EXIT,
    OP_RUN,
    STATUS_ERROR,
    cell_message,
    recv_message,
    send_message,
)


class Worker:
    def __init__(self, cfg: dict, seccomp: object | None = None) -> None:
        self.cfg = cfg
        self.limits = cfg["limits"]
        self.work_dir = cfg["work_dir"]
        self.inputs = list(cfg["inputs"])
        originals = [str(p or "") for p in cfg.get("input_paths") or []]
        self.paths = PathMap(self.work_dir, dict(zip(originals, self.inputs, strict=False)))
        self.req_fd = int(cfg["req_fd"])
        self.resp_fd = int(cfg["resp_fd"])
        self.notes: list[str] = []
        self.pid = os.getpid()
        self.seccomp = seccomp  # an iso.SeccompFilter built by the zygote, or None: build it here
        self.policy = PolicyMonitor(self.work_dir, iso.interpreter_paths())
        # the cells' namespace and their execution and capture (shared with in-process callers)
        self.cells = CellRunner(self.work_dir, self.inputs, self.paths, self.limits, self.policy)

    # -- set-up -----------------------------------------------------------------------------
    def isolate(self, layers: dict[str, bool]) -> None:
        if not self.cfg.get("worker_prepared"):  # else done in advance by a PreforkedWorker
            self.path_fds = prepare_worker_process(self.cfg, layers, self.notes)
        drop_worker_privileges(self.cfg, layers, self.seccomp, self.notes)
        os.chdir(self.work_dir)
        os.umask(0o022)

    def install_hooks(self) -> None:
        import matplotlib
        import matplotlib.pyplot as plt
        from matplotlib import _pylab_helpers
        from matplotlib.figure import Figure
        from PIL import Image

        cells = self.cells  # its capture is the current cell's

        def show(*args, **kwargs):  # noqa: ARG001 - matplotlib.pyplot.show signature
            managers = sorted(_pylab_helpers.Gcf.get_all_fig_managers(), key=lambda m: m.num)
            for manager in managers:
                cells.capture.add_figure(manager.canvas.figure, "figure")
            plt.close("all")

        def figure_show(self, *args, **kwargs):  # noqa: ARG001
            cells.capture.add_figure(self, "figure")

        def image_show(self, *args, **kwargs):  # noqa: ARG001
            cells.capture.add_pil(self, "show")

        plt.show = show
        matplotlib.pyplot.show = show
        Figure.show = figure_show
        Image.Image.show = image_show
        cv2 = sys.modules.get("cv2")
        if cv2 is not None:

            def imshow(winname, mat):
                cells.capture.add_pil(ndarray_to_pil(mat, bgr=True), safe_stem(str(winname)))

            cv2.imshow = imshow
            cv2.waitKey = lambda *a, **k: -1
            cv2.destroyAllWindows = lambda *a, **k: None
            cv2.destroyWindow = lambda *a, **k: None
            cv2.namedWindow = lambda *a, **k: None

    def build_namespace(self) -> None:
        random.seed(0)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(0)
        if self.work_dir not in sys.path:
            sys.path.append(self.work_dir)
        self.cells.build_namespace(self.notes)

    def send_input_greys(self) -> None:
        """Each input in 8-bit grey, as loaded and before any cell runs (protocol: input_grey):
        the parent's judges use it instead of decoding the input once more."""
        for k, im in enumerate(self.cells.loaded):
            grey = None
            if im is not None:
                try:
                    grey = im.convert("L")
                except Exception:  # noqa: BLE001 - a mode PIL cannot convert: the judges decode it
                    grey = None
            w, h = grey.size if grey is not None else (0, 0)
            send_message(self.resp_fd, {"type": MSG_INPUT_GREY, "index": k, "width": w, "height": h},
                         grey.tobytes() if grey is not None else b"")

    # -- cells ------------------------------------------------------------------------------
    def run_cell(self, index: int, code: str) -> dict:
        result = self.cells.run(index, code)
        images = [{"name": name, "png": base64.b64encode(png).decode("ascii")} for name, png in result.images]
        return cell_message(index, result.status, result.stdout, result.error, images)

    def serve(self) -> None:
        while True:
            try:
                msg = recv_message(self.req_fd)
            except Exception:  # noqa: BLE001
                os._exit(EXIT_PROTOCOL)
            if msg is None or msg.get("op") == OP_EXIT:
                os._exit(0)
            if msg.get("op") != OP_RUN:
                os._exit(EXIT_PROTOCOL)
            index = int(msg["index"])
            try:
                result = self.run_cell(index, str(msg["code"]))
            except Exception as exc:  # noqa: BLE001 - e.g. the cell sabotaged builtins the runner uses
                if os.getpid() != self.pid:
                    os._exit(0)
                sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
                error = f"sandbox runner failed after the cell: {type(exc).__name__}: {exc}"[:4000]
                result = cell_message(index, STATUS_ERROR, "", error, [])
            send_message(self.resp_fd, result)


def prepare_worker_process(cfg: dict, layers: dict[str, bool], notes: list[str]) -> list[int]:
    """The worker's first layers: rlimits, no_new_privs (and the imports at the process level).
    Depends only on the sandbox's settings, not on the trajectory. Returns the fds that keep
    unreadable sys.path entries reachable after the privileges are dropped."""
    iso.set_oom_score_adj(0)  # init is protected from the OOM killer; the cells are not
    layers["rlimits"] = iso.apply_rlimits(cfg["limits"])
    layers["no_new_privs"] = iso.set_no_new_privs()
    if cfg.get("preload", True) and not cfg.get("preloaded"):
        notes.extend(iso.preimport_libraries())
    return iso.expose_unreadable_sys_path()


def drop_worker_privileges(cfg: dict, layers: dict[str, bool], seccomp: object | None, notes: list[str]) -> None:
    """The unprivileged uid, then the seccomp filter (last: it refuses the steps before it)."""
    uid, gid = cfg.get("uid"), cfg.get("gid")
    layers["unprivileged_uid"] = iso.drop_privileges(int(uid), int(gid)) if uid is not None else False
    layers["seccomp"] = False
    if "seccomp" not in cfg.get("disabled", ()):
        try:
            seccomp = seccomp if seccomp is not None else iso.SeccompFilter()
            layers["seccomp"] = seccomp.load()  # last: it refuses the steps above
        except OSError as exc:
            notes.append(f"seccomp filter not applied: {exc}")


# The sandbox settings a pre-forked worker was isolated with; a trajectory must match them.
WORKER_SETTINGS = ("limits", "uid", "gid", "disabled")


class PreforkedWorker:
    """A worker forked by a standby init before its trajectory is known, with its rlimits and
    no_new_privs applied (the fork and those layers leave the critical path: ~2 ms of a
    trajectory's ~7 ms start here). It waits, still root and running nothing of the trajectory, on a socket only its
    init holds; with the trajectory's config and pipes it drops to the sandbox uid, loads the
    seccomp filter and runs the cells, exactly as a worker forked on the spot."""

    def __init__(self, settings: dict, layers: dict[str, bool], seccomp: object | None, closing: list[int]) -> None:
        self.settings = {k: settings.get(k) for k in WORKER_SETTINGS}
        init_pid = os.getpid()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                ours.close()
                for fd in closing:  # the standby's socket to the zygote: never the cells'
                    os.close(fd)
                iso.set_parent_death_signal(init_pid)
                self._serve(theirs, {**settings, "preloaded": True}, layers, seccomp)
            finally:
                os._exit(EXIT_SETUP_FAILED)
        theirs.close()
        self.sock = ours

    @staticmethod
    def _serve(sock, settings: dict, layers: dict[str, bool], seccomp: object | None) -> None:
        notes: list[str] = []
        path_fds = prepare_worker_process(settings, layers, notes)
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 16, HANDOFF_WORKER_FDS)
            cfg = recv_message(sock.fileno()) if msg == HANDOFF and len(fds) == HANDOFF_WORKER_FDS else None
        except (OSError, ValueError):
            cfg = None
        if not cfg:
            os._exit(0)  # the init went away or gave up on this worker
        sock.close()
        req_fd, resp_fd, log_fd = fds
        os.dup2(log_fd, 1)  # fd-level output goes to the trajectory's log, as with a fresh fork
        os.dup2(log_fd, 2)
        os.close(log_fd)
        cfg.update(req_fd=req_fd, resp_fd=resp_fd, worker_prepared=True)
        worker_main(cfg, layers, float(cfg.pop("started_monotonic")), seccomp, path_fds, notes)

    def matches(self, cfg: dict) -> bool:
        return all(cfg.get(k) == v for k, v in self.settings.items())

    def start(self, cfg: dict, started: float) -> None:
        """Hand the trajectory to the worker (raises OSError if it is gone)."""
        socket.send_fds(self.sock, [HANDOFF], [int(cfg["req_fd"]), int(cfg["resp_fd"]), 1])
        send_message(self.sock.fileno(), {**cfg, "started_monotonic": started})
        self.sock.close()

    def discard(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def worker_main(
    cfg: dict, layers: dict[str, bool], started: float, seccomp: object | None = None,
    path_fds: list[int] | None = None, notes: list[str] | None = None,
) -> None:  # fmt: skip
    worker = Worker(cfg, seccomp)
    worker.path_fds = list(path_fds or [])
    worker.notes.extend(notes or [])
    try:
        worker.isolate(layers)
        worker.install_hooks()
        worker.build_namespace()
        sys.addaudithook(worker.policy)  # active only while a cell runs
        layers["policy_monitor"] = True
    except BaseException as exc:  # noqa: BLE001
        print(f"sandbox set-up failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SETUP_FAILED)
    send_message(
        worker.resp_fd,
        {
            "type": MSG_READY,
            "layers": layers,
            "notes": worker.notes,
            "startup_ms": (time.monotonic() - started) * 1000.0,
        },
    )
    if cfg.get("input_greys"):
        worker.send_input_greys()
    worker.serve()

