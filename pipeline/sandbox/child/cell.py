"""One cell of a trajectory, run in its namespace: the rules the sandbox's worker and the
sample-corpus generator share (:mod:`sample_corpus.execution` runs its own, trusted, cells here).

A :class:`CellRunner` keeps a trajectory's state between its cells (the namespace, the last
``processed_path``) and runs each cell in the current directory, which must be the work dir:

* the namespace holds the inputs loaded as ``image``/``images``/``image_clue_<k>``, their file
  names in the work dir as ``image_path``/``image_paths``, ``work_dir`` and ``display``;
* the cell's string constants that name a mapped path are redirected (:class:`~.paths.PathMap`);
  it is compiled as ``<cell{index}>`` and run with stdout and stderr captured and capped; a last
  expression that is an image or a figure is shown, as a notebook does;
* an exception is the cell's error: its traceback keeps only the cell's frames (and what they
  called), its status says what kind (:mod:`.errors`);
* its images: the image files written or changed in the work dir during the cell (sorted by path;
  a PNG passes through byte for byte, another format is re-encoded as PNG), the files it pointed
  at (``processed_path``, printed paths), then the images it showed (:mod:`.capture`).

What is process-wide stays with the caller. The sandbox's worker isolates itself, changes into
the work dir once, installs the display hooks (``plt.show``, ``Image.show``, ``cv2.imshow`` add
to :attr:`CellRunner.capture`), seeds ``random`` and ``numpy.random`` and puts the work dir on
``sys.path``, and passes its policy monitor. An in-process caller running trusted code changes
into the work dir around each call and does without the rest.
"""

from __future__ import annotations

import ast
import builtins
import linecache
import os
import re
import sys
from dataclasses import dataclass, field

from pipeline.sandbox.child.capture import (
    IMAGE_EXTENSIONS,
    CappedText,
    Captures,
    compose_output,
    limit_capture_pixels,
    read_image_file,
    safe_stem,
    snapshot_images,
)
from pipeline.sandbox.child.errors import classify_exception, format_exception
from pipeline.sandbox.child.paths import OUTPUT_ROOT, PathMap
from pipeline.sandbox.protocol import STATUS_FORBIDDEN, STATUS_OK, image_name


def split_last_expression(tree):
    """(module without its last statement, the last expression) when the cell ends on an
    expression statement, as a notebook shows it; else (tree, None)."""
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return tree, None
    last = ast.Expression(tree.body[-1].value)
    ast.copy_location(last, tree.body[-1])
    return ast.Module(body=tree.body[:-1], type_ignores=[]), last


@dataclass
class CellResult:
    status: str  # STATUS_OK, or the kind of error (protocol CHILD_STATUSES)
    stdout: str  # captured stdout (+ STDERR_MARKER + stderr and capture notes), capped
    error: str  # the traceback (policy violations first), "" when the cell raised nothing
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (image name, PNG bytes)
    exception: BaseException | None = None  # what the cell raised (an in-process caller re-raises Ctrl-C)


class _Unmonitored:
    """The policy monitor's place when none is installed (trusted code run in-process)."""

    def __init__(self) -> None:
        self.active = False
        self.violations: list[str] = []


class CellRunner:
    """Runs a trajectory's cells one after the other in one namespace (see the module doc).

    ``inputs`` are the input files' names in ``work_dir``; ``limits`` the sandbox's limits
    (``SandboxLimits`` as a dict); ``monitor`` an object with ``active`` and ``violations``
    (:class:`~.policy.PolicyMonitor`): active while a cell runs, and any violation it records
    makes the cell ``forbidden``."""

    def __init__(self, work_dir: str, inputs: list[str], paths: PathMap, limits: dict, monitor=None) -> None:
        self.work_dir = work_dir
        self.inputs = list(inputs)
        self.paths = paths
        self.limits = limits
        limit_capture_pixels(int(limits.get("max_output_pixels", 1 << 62)))  # what the parent keeps
        self.monitor = monitor if monitor is not None else _Unmonitored()
        self.capture = Captures(0, 0)
        self.namespace: dict = {}
        self.loaded: list = []  # the inputs as loaded (PIL images, None when one did not load)
        self.processed_path: object = None
        self.pid = os.getpid()

    def build_namespace(self, notes: list[str]) -> None:
        """Load the inputs (from the current directory, the work dir) and set up the namespace;
        an input that does not load is None and a note."""
        from PIL import Image

        loaded = []
        for name in self.inputs:
            try:
                im = Image.open(name)
                im.load()  # reads the pixels and closes the file
                loaded.append(im)
            except Exception as exc:  # noqa: BLE001 - the cells will fail on it, visibly
                notes.append(f"input {name}: {type(exc).__name__}: {exc}")
                loaded.append(None)
        self.loaded = list(loaded)
        try:
            self.paths.prepare()
        except OSError as exc:
            notes.append(f"output folder {OUTPUT_ROOT}: {exc}")
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

    def run(self, index: int, code: str) -> CellResult:
        """Run cell ``index`` (its traceback's file is ``<cell{index}>``) in the namespace."""
        cap = int(self.limits["max_output_bytes"])
        out, err = CappedText(cap), CappedText(cap)
        self.capture = Captures(int(self.limits["max_images_per_cell"]), int(self.limits["max_file_bytes"]))
        before = snapshot_images(self.work_dir)
        filename = f"<cell{index}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        status, error, raised = STATUS_OK, "", None
        monitor = self.monitor
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        monitor.violations = []
        try:
            body, last = split_last_expression(self.paths.rewrite(ast.parse(code, filename)))
            compiled = compile(body, filename, "exec", dont_inherit=True)
            shown = compile(last, filename, "eval", dont_inherit=True) if last is not None else None
            monitor.active = True
            exec(compiled, self.namespace)
            if shown is not None:
                self.show_result(eval(shown, self.namespace))
        except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt are cell errors too
            status, error, raised = classify_exception(exc), format_exception(exc, cap), exc
        finally:
            monitor.active = False
            if os.getpid() != self.pid:
                os._exit(0)  # a process the cell forked fell through: it must not go on as the runner
            sys.stdout, sys.stderr = saved
        if monitor.violations:  # attempted, even if the cell caught the refusal
            status = STATUS_FORBIDDEN
            error = ("\n".join(dict.fromkeys(monitor.violations)) + ("\n" + error if error else ""))[:cap]
        images = self.collect_images(index, before, out.getvalue().decode("utf-8", "replace"))
        stdout = self.paths.unmap(compose_output(out, err, self.capture.notes, cap))
        return CellResult(status, stdout, self.paths.unmap(error), images, raised)

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

    def collect_images(self, index: int, before: dict, stdout: str = "") -> list[tuple[str, bytes]]:
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
        return [(image_name(index, k, stem), png) for k, (stem, png) in enumerate(capture.items)]
