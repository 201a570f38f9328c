"""The worker: the process that runs a trajectory's cells (pid 2 of its PID namespace).

It applies the worker's layers (rlimits, no_new_privs, the unprivileged uid, then the seccomp
filter), preloads the inputs into the cells' namespace, installs the capture hooks and the policy
monitor, says ready and then runs one cell per request (:meth:`Worker.serve`). At the zygote
level a standby init forks it in advance (:class:`PreforkedWorker`).
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import linecache
import os
import random
import re
import signal
import socket
import sys
import time

from pipeline.sandbox import isolation as iso
from pipeline.sandbox.child.capture import (
    IMAGE_EXTENSIONS,
    CappedText,
    Captures,
    compose_output,
    limit_capture_pixels,
    ndarray_to_pil,
    read_image_file,
    safe_stem,
    snapshot_images,
)
from pipeline.sandbox.child.errors import classify_exception, format_exception
from pipeline.sandbox.child.paths import OUTPUT_ROOT, PathMap
from pipeline.sandbox.child.policy import PolicyMonitor
from pipeline.sandbox.protocol import (
    EXIT_PROTOCOL,
    EXIT_SETUP_FAILED,
    HANDOFF,
    HANDOFF_WORKER_FDS,
    MSG_READY,
    OP_EXIT,
    OP_RUN,
    STATUS_ERROR,
    STATUS_FORBIDDEN,
    STATUS_OK,
    cell_message,
    image_name,
    recv_message,
    send_message,
)


def split_last_expression(tree):
    """(module without its last statement, the last expression) when the cell ends on an
    expression statement, as a notebook shows it; else (tree, None)."""
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return tree, None
    last = ast.Expression(tree.body[-1].value)
    ast.copy_location(last, tree.body[-1])
    return ast.Module(body=tree.body[:-1], type_ignores=[]), last


class Worker:
    def __init__(self, cfg: dict, seccomp: object | None = None) -> None:
        self.cfg = cfg
        self.limits = cfg["limits"]
        self.work_dir = cfg["work_dir"]
        limit_capture_pixels(int(self.limits.get("max_output_pixels", 1 << 62)))  # what the parent keeps
        self.inputs = list(cfg["inputs"])
        originals = [str(p or "") for p in cfg.get("input_paths") or []]
        self.paths = PathMap(self.work_dir, dict(zip(originals, self.inputs, strict=False)))
        self.processed_path: object = None
        self.req_fd = int(cfg["req_fd"])
        self.resp_fd = int(cfg["resp_fd"])
        self.capture = Captures(0, 0)
        self.namespace: dict = {}
        self.notes: list[str] = []
        self.pid = os.getpid()
        self.seccomp = seccomp  # an iso.SeccompFilter built by the zygote, or None: build it here
        self.policy = PolicyMonitor(self.work_dir, iso.interpreter_paths())

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

        worker = self

        def show(*args, **kwargs):  # noqa: ARG001 - matplotlib.pyplot.show signature
            managers = sorted(_pylab_helpers.Gcf.get_all_fig_managers(), key=lambda m: m.num)
            for manager in managers:
                worker.capture.add_figure(manager.canvas.figure, "figure")
            plt.close("all")

        def figure_show(self, *args, **kwargs):  # noqa: ARG001
            worker.capture.add_figure(self, "figure")

        def image_show(self, *args, **kwargs):  # noqa: ARG001
            worker.capture.add_pil(self, "show")

        plt.show = show
        matplotlib.pyplot.show = show
        Figure.show = figure_show
        Image.Image.show = image_show
        cv2 = sys.modules.get("cv2")
        if cv2 is not None:

            def imshow(winname, mat):
                worker.capture.add_pil(ndarray_to_pil(mat, bgr=True), safe_stem(str(winname)))

            cv2.imshow = imshow
            cv2.waitKey = lambda *a, **k: -1
            cv2.destroyAllWindows = lambda *a, **k: None
            cv2.destroyWindow = lambda *a, **k: None
            cv2.namedWindow = lambda *a, **k: None

    def display(self, *objs, **kwargs) -> None:  # noqa: ARG002 - IPython.display.display stand-in
        from matplotlib.figure import Figure
        from PIL import Image

        for obj in objs:
            if isinstance(obj, Image.Image):
                self.capture.add_pil(obj, "display")
            elif isinstance(obj, Figure):
                self.capture.add_figure(obj, "figure")
            else:
                print(repr(obj))

    def build_namespace(self) -> None:
        from PIL import Image

        loaded = []
        for name in self.inputs:
            try:
                im = Image.open(name)
                im.load()  # reads the pixels and closes the file
                loaded.append(im)
            except Exception as exc:  # noqa: BLE001 - the cells will fail on it, visibly
                self.notes.append(f"input {name}: {type(exc).__name__}: {exc}")
                loaded.append(None)
        random.seed(0)
        np = sys.modules.get("numpy")
        if np is not None:
            np.random.seed(0)
        if self.work_dir not in sys.path:
            sys.path.append(self.work_dir)
        try:
            self.paths.prepare()
        except OSError as exc:
            self.notes.append(f"output folder {OUTPUT_ROOT}: {exc}")
        paths = list(self.inputs)  # relative to the work dir, the cells' cwd
        self.namespace = {
            "__name__": "__main__",
            "__builtins__": builtins,
            "image": loaded[0] if loaded else None,
            "images": loaded,
            "image_path": paths[0] if paths else None,
            "image_paths": paths,
            "work_dir": self.work_dir,
            "display": self.display,
            # PyVision exposes the inputs as image_clue_0, image_clue_1, ...
            **{f"image_clue_{k}": im for k, im in enumerate(loaded)},
        }

    # -- cells ------------------------------------------------------------------------------
    def run_cell(self, index: int, code: str) -> dict:
        cap = int(self.limits["max_output_bytes"])
        out, err = CappedText(cap), CappedText(cap)
        self.capture = Captures(int(self.limits["max_images_per_cell"]), int(self.limits["max_file_bytes"]))
        before = snapshot_images(self.work_dir)
        filename = f"<cell{index}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        status, error = STATUS_OK, ""
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        self.policy.violations = []
        try:
            body, last = split_last_expression(self.paths.rewrite(ast.parse(code, filename)))
            compiled = compile(body, filename, "exec", dont_inherit=True)
            shown = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
            self.policy.active = True
            exec(compiled, self.namespace)
            if shown is not None:
                self.show_result(eval(shown, self.namespace))
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt are cell errors too
            status = classify_exception(exc)
            error = format_exception(exc, cap)
        finally:
            self.policy.active = False
            if os.getpid() != self.pid:
                os._exit(0)  # a process the cell forked fell through: it must not answer the parent
            sys.stdout, sys.stderr = saved
        if self.policy.violations:  # attempted, even if the cell caught the refusal
            status = STATUS_FORBIDDEN
            error = ("\n".join(dict.fromkeys(self.policy.violations)) + ("\n" + error if error else ""))[:cap]
        images = self.collect_images(index, before, out.getvalue().decode("utf-8", "replace"))
        stdout = self.paths.unmap(compose_output(out, err, self.capture.notes, cap))
        return cell_message(index, status, stdout, self.paths.unmap(error), images)

    def show_result(self, value) -> None:
        """A notebook shows a cell's last expression: images are captured (text is not echoed,
        matching the recorded observations of script-style trajectories)."""
        from matplotlib.figure import Figure
        from PIL import Image

        if isinstance(value, Image.Image):
            self.capture.add_pil(value, "output")
        elif isinstance(value, Figure):
            self.capture.add_figure(value, "figure")

    def referenced_images(self, stdout: str) -> list[str]:
        """Work-dir image files (not inputs) the cell pointed at without writing them in this
        cell: a changed ``processed_path`` variable (Thyme), or paths it printed."""
        found = []
        value = self.namespace.get("processed_path")
        if isinstance(value, str) and value != self.processed_path:
            found.append(value)
        self.processed_path = value if isinstance(value, str) else None
        # tokens between blanks and quotes (linear: no backtracking over a flood of output)
        found += [t.rstrip(".,;:)]}") for t in re.split(r"[\s'\"(\[{,]+", stdout)]
        found = list(dict.fromkeys(t for t in found if t and t.lower().endswith(IMAGE_EXTENSIONS)))
        found = found[: 4 * int(self.limits["max_images_per_cell"]) + 1]  # a flood of names costs no more
        rels = []
        for path in found:
            full = os.path.realpath(os.path.join(self.work_dir, path))
            rel = os.path.relpath(full, os.path.realpath(self.work_dir))
            if rel.startswith(("..", os.sep)) or rel in self.inputs or rel in self.paths.aliases or not os.path.isfile(full):
                continue
            rels.append(rel)
        return list(dict.fromkeys(rels))

    def collect_images(self, index: int, before: dict, stdout: str = "") -> list[dict]:
        capture = self.capture
        shown, capture.items, capture.bytes = capture.items, [], 0
        after = snapshot_images(self.work_dir)
        inputs = set(self.inputs)
        changed, inodes = [], set()
        for p in sorted(p for p, sig in after.items() if p not in inputs and before.get(p) != sig):
            if after[p][2] not in inodes:  # one file under several names (an input's aliases) is one image
                inodes.add(after[p][2])
                changed.append(p)
        changed += [p for p in self.referenced_images(stdout) if p not in changed]
        for rel in changed:
            stem = safe_stem(os.path.splitext(os.path.basename(rel))[0])
            if not capture.room():
                capture.notes.append(
                    f"image {rel!r} not kept: more than {capture.max_images} images in this cell"
                )
                continue
            capture.add_png(stem, read_image_file(os.path.join(self.work_dir, rel), rel, capture.notes))
        for stem, png in shown:  # files first (sorted by path), then shown images in call order
            capture.add_png(stem, png)
        return [
            {"name": image_name(index, k, stem), "png": base64.b64encode(png).decode("ascii")}
            for k, (stem, png) in enumerate(capture.items)
        ]

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
    worker.serve()

