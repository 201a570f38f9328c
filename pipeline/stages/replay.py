"""Replay: run every code cell of each trajectory in the sandbox and store what really happened.

One sandbox per Ray actor (expensive setup once, in :meth:`ReplayStage.setup`). Per cell the
replay keeps status, stdout, error, duration, produced images and its fidelity to the recorded
observation; per sample ``replay_status`` sums it up:
  ``not_run`` (invalid input), ``no_code``, ``ok`` (every cell ok), or the worst cell status
  (``forbidden`` > ``replay_env`` > ``memory`` > ``timeout`` > ``killed`` > ``error``).

Replay-environment gaps (``replay_env``). The trajectory was recorded in an environment this
replay may not have. A cell the sandbox reports as ``error`` gets status ``replay_env`` and its
gap ``<kind>:<name>`` (cell ``env_gap``; the row's ``replay_env`` lists every gap in cell order)
when its final exception is one of these, and the recorded observation of that cell does not show
the same exception (a recorded error that the replay reproduces is the trajectory's own):

* ``module:<top-level package>`` — ``ModuleNotFoundError`` / ``ImportError: No module named 'x.y'``
  (``module:x``): the module is not installed in the environment the sandbox runs.
* ``tool:<name>`` — ``NameError: name 'f' is not defined`` where the trajectory *calls* ``f(...)``
  and no cell defines, imports or assigns ``f``: a tool function its own environment provided.
  (A name that is used but not called, e.g. a misspelt variable, stays a code ``error``.)
* ``file:<path>`` — ``FileNotFoundError`` for a path the record itself references (named in the
  question text, or one of its images' paths or file names, compared by base name), or a failure
  on a ``None`` image (``'NoneType' object ...``, OpenCV's ``!_src.empty()``) after
  ``cv2.imread`` of such a path.
* Consequences: a later ``NameError`` on a name that only a gap cell binds (``nx`` after
  ``import networkx as nx`` failed) gets that cell's gap.

Classification happens here, in the parent, from the error text the sandbox returned and the
trajectory's code: the cells' own process is never trusted to report it. A gap can only ever
reject a sample (routing: ``replay_env:<kind>:<name>``), so a cell that fakes one gains nothing.
"""

from __future__ import annotations

import ast
import builtins
import io
import logging
import os
import posixpath
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from PIL import Image

from pipeline.config import ReplayConfig, RunConfig
from pipeline.sandbox import InputImage
from pipeline.sandbox.levels import SandboxLevelError, check_level, make_sandbox, sandbox_limits, sandbox_uid
from pipeline.stage import Stage
from pipeline.stages.fidelity import cell_fidelity
from schemas import sample as S

log = logging.getLogger(__name__)

STATUS_SEVERITY = (S.STATUS_FORBIDDEN, S.REPLAY_ENV_STATUS, "memory", "timeout", "killed", "error")


class SandboxBrokenError(RuntimeError):
    """The sandbox cannot run even a trivial cell: an installation problem, not a sample's fault."""


def check_sandbox_works(sandbox: Any) -> None:
    """Replay a trivial trajectory; if that fails, stop the run instead of rejecting every sample."""
    out = sandbox.replay(["x = 41", "print(x + 1)"], [])
    if [o.status for o in out] != ["ok", "ok"] or out[1].stdout != "42\n":
        detail = "; ".join(f"{o.status}: {o.error.strip()[:400]}" for o in out if o.status != "ok")
        raise SandboxBrokenError(
            f"the replay sandbox cannot run a trivial cell ({detail or out[1].stdout!r}). "
            "Check that the libraries in pyproject.toml are installed in this interpreter and "
            "run `python -m pytest tests/test_sandbox.py` for details."
        )


def summarize_status(statuses: list[str]) -> str:
    if not statuses:
        return S.REPLAY_NO_CODE
    for s in STATUS_SEVERITY:
        if s in statuses:
            return s
    return S.STATUS_OK if all(s == S.STATUS_OK for s in statuses) else "error"


def _png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


# --- replay-environment gaps ----------------------------------------------------------------
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$")
_NO_MODULE = re.compile(r"No module named '([^']+)'")
_NAME_UNDEFINED = re.compile(r"^name '([^']+)' is not defined")
_NO_FILE = re.compile(r"No such file or directory: '([^']*)'")
_NONE_IMAGE = ("'NoneType' object", "!_src.empty()", "!ssize.empty()", "!_img.empty()", "src.empty()")
_BUILTINS = frozenset(dir(builtins))


def final_exception(error: str) -> tuple[str, str]:
    """(exception type without its module, message) of the last exception in a traceback text."""
    lines = error.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")),
                default=-1)
    for line in lines[start + 1:]:
        if not line or line[0].isspace():
            continue
        m = _EXC_LINE.match(line)
        if m:
            return m.group(1).rsplit(".", 1)[-1], m.group(2) or ""
    return "", ""


@dataclass(frozen=True)
class _CellNames:
    bound: frozenset[str]  # names the cell defines, imports or assigns
    called: frozenset[str]  # names the cell calls as f(...)
    imreads: tuple[Any, ...]  # the first argument node of each cv2.imread(...) call
    literals: dict[str, str]  # name = "string constant" assignments


def _cell_names(code: str) -> _CellNames:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return _CellNames(frozenset(), frozenset(), (), {})
    bound: set[str] = set()
    called: set[str] = set()
    imreads: list[Any] = []
    literals: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            bound.update((a.asname or a.name) for a in node.names)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(node.names)
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                called.add(node.func.id)
            elif isinstance(node.func, ast.Attribute) and node.func.attr == "imread" and node.args:
                imreads.append(node.args[0])
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    literals[target.id] = node.value.value
    return _CellNames(frozenset(bound), frozenset(called), tuple(imreads), literals)


def _record_references(row: dict[str, Any]) -> tuple[str, set[str], set[str]]:
    """(question text, image paths and names, their base names) of a record."""
    paths = {p for img in row.get(S.IMAGES) or [] for p in (img.get(S.IMG_PATH), img.get(S.IMG_NAME)) if p}
    return row.get(S.QUESTION) or "", paths, {posixpath.basename(p) for p in paths}


def _referenced(path: str, refs: tuple[str, set[str], set[str]]) -> bool:
    """True when the record itself names ``path`` (in its question, or as an image path or name)."""
    question, paths, bases = refs
    if not path:
        return False
    base = posixpath.basename(path.removeprefix("file://"))
    return path in paths or path in question or (bool(base) and base in bases)


def _reproduced(signature: str, recorded: str | None) -> bool:
    """The recorded observation already shows this failure: the trajectory's own, not a gap."""
    return bool(recorded) and bool(signature) and signature in recorded


def classify_env_gaps(
    codes: list[str], statuses: list[str], errors: list[str], recorded: list[str | None], row: dict[str, Any]
) -> list[str | None]:
    """Per cell, its replay-environment gap ``<kind>:<name>`` or None (see the module docstring).

    ``codes``/``statuses``/``errors``/``recorded`` are per replayed cell: its code, the sandbox's
    status and error text, and the trajectory's recorded observation text."""
    names = [_cell_names(c) for c in codes]
    all_bound = frozenset().union(*(n.bound for n in names)) if names else frozenset()
    all_called = frozenset().union(*(n.called for n in names)) if names else frozenset()
    literals: dict[str, str] = {}
    refs = _record_references(row)
    gaps: list[str | None] = []
    gap_bindings: list[tuple[frozenset[str], str]] = []  # names bound by cells that hit a gap
    for k, (status, error) in enumerate(zip(statuses, errors, strict=True)):
        literals.update(names[k].literals)
        gap = None
        if status == "error" and error:
            exc_type, message = final_exception(error)
            gap, signature = _gap_of(
                exc_type, message, names[: k + 1], literals, all_bound, all_called, gap_bindings, refs
            )
            if gap is not None and _reproduced(signature, recorded[k]):
                gap = None
        if gap is not None:
            gap_bindings.append((names[k].bound, gap))
        gaps.append(gap)
    return gaps


def _gap_of(
    exc_type: str, message: str, names: list[_CellNames], literals: dict[str, str], all_bound: frozenset[str],
    all_called: frozenset[str], gap_bindings: list[tuple[frozenset[str], str]], refs: tuple[str, set[str], set[str]],
) -> tuple[str | None, str]:
    """(gap or None, the text that shows the same failure in a recorded observation)."""
    if exc_type in ("ModuleNotFoundError", "ImportError"):
        m = _NO_MODULE.search(message)
        return (f"module:{m.group(1).split('.')[0]}", m.group(0)) if m and m.group(1) else (None, "")
    if exc_type == "NameError":
        m = _NAME_UNDEFINED.match(message)
        if not m:
            return None, ""
        name, signature = m.group(1), m.group(0)
        for bound, gap in gap_bindings:
            if name in bound or "*" in bound:
                return gap, signature  # a consequence of an earlier gap (a failed import binds nothing)
        if name in all_called and name not in all_bound and name not in _BUILTINS:
            return f"tool:{name}", signature
        return None, ""
    if exc_type == "FileNotFoundError":
        m = _NO_FILE.search(message)
        return (f"file:{m.group(1)}", m.group(0)) if m and _referenced(m.group(1), refs) else (None, "")
    if any(sig in message for sig in _NONE_IMAGE):  # cv2.imread returned None for a missing file
        for cell in names:
            for arg in cell.imreads:
                path = arg.value if isinstance(arg, ast.Constant) else literals.get(getattr(arg, "id", ""))
                if isinstance(path, str) and _referenced(path, refs):
                    return f"file:{path}", message.strip()[:80]
    return None, ""


def replay_row(row: dict[str, Any], sandbox: Any) -> dict[str, Any]:
    """Fill REPLAY, REPLAY_STATUS and REPLAY_ENV of one canonical row."""
    row[S.REPLAY_ENV] = []
    if row.get(S.INPUT_ERROR) or row.get(S.DUPLICATE_OF):  # exact duplicates: the kept copy is replayed
        row[S.REPLAY], row[S.REPLAY_STATUS] = [], S.REPLAY_NOT_RUN
        return row
    turns = row[S.TURNS] or []
    code_turns = [i for i, t in enumerate(turns) if t[S.TURN_CODE] and t[S.TURN_CODE].strip()]
    if not code_turns:
        row[S.REPLAY], row[S.REPLAY_STATUS] = [], S.REPLAY_NO_CODE
        return row
    inputs = [InputImage(name=img[S.IMG_NAME] or f"input_{k}.png", data=img[S.IMG_BYTES], path=img[S.IMG_PATH] or "")
              for k, img in enumerate(row[S.IMAGES] or [])]
    codes = [turns[i][S.TURN_CODE] for i in code_turns]
    zygote = getattr(sandbox, "zygote_pid", None)
    outcomes = sandbox.replay(codes, inputs)
    if zygote is not None and getattr(sandbox, "zygote_pid", None) != zygote:
        # The zygote died under this trajectory (killed, OOM-killed with the machine): a failure
        # of the replay machinery, not of the code. Replay it once more on a fresh zygote, so
        # the row's outcome does not depend on it.
        outcomes = sandbox.replay(codes, inputs)
    greys = getattr(sandbox, "last_input_greys", None)
    if greys and any(g is not None for g in greys):
        row[S.INPUT_GREYS] = list(greys)  # for the judges in this actor (transient)
    gaps = classify_env_gaps(
        codes, [o.status for o in outcomes], [o.error for o in outcomes],
        [turns[i][S.TURN_OBS_TEXT] for i in code_turns], row,
    )
    cells = []
    for cell_index, (turn_index, out, gap) in enumerate(zip(code_turns, outcomes, gaps, strict=True)):
        turn = turns[turn_index]
        images = [S.image_record(name, data, *_png_size(data)) for name, data in out.images]
        replayed_text = out.stdout + ("\n" + out.error if out.error else "")
        fidelity = cell_fidelity(
            turn[S.TURN_OBS_TEXT],
            [i[S.IMG_BYTES] for i in turn[S.TURN_OBS_IMAGES] or []],
            replayed_text,
            [i[S.IMG_BYTES] for i in images],
            code=turn[S.TURN_CODE],
        )
        cells.append(
            {
                S.CELL_INDEX: cell_index,
                S.CELL_TURN: turn_index,
                S.CELL_STATUS: S.REPLAY_ENV_STATUS if gap else out.status,
                S.CELL_STDOUT: out.stdout,
                S.CELL_ERROR: out.error,
                S.CELL_DURATION_MS: out.duration_ms,
                S.CELL_IMAGES: images,
                S.CELL_FIDELITY: fidelity,
                S.CELL_ENV_GAP: gap,
            }
        )
    row[S.REPLAY] = cells
    row[S.REPLAY_STATUS] = summarize_status([c[S.CELL_STATUS] for c in cells])
    row[S.REPLAY_ENV] = list(dict.fromkeys(g for g in gaps if g))
    return row


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_tree_cpu_s(pid: int) -> float:
    """CPU seconds of a live process and of its children it has reaped (/proc/<pid>/stat
    utime + stime + cutime + cstime); 0.0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


class SandboxCpuMeter:
    """CPU seconds the sandbox's processes used since the last :meth:`take` (the cells' own work
    and the sandbox's overheads): the zygote and the trajectories it forked and reaped, plus
    sandbox children this process reaped itself (the process level). Measured, not inferred from
    wall time, so it is not inflated when the cores are shared (manifest ``timings.stages``)."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self._last = self._read()

    def _read(self) -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        total = children.ru_utime + children.ru_stime
        pid = getattr(self.sandbox, "zygote_pid", None)
        return total + (_process_tree_cpu_s(pid) if pid is not None else 0.0)

    def take(self) -> float:
        """CPU seconds since the last call (a batch in which the zygote restarted counts 0)."""
        now = self._read()
        used, self._last = max(0.0, now - self._last), now
        return used


@dataclass(kw_only=True)
class ReplayStage(Stage):
    """Ray stage (actors): each actor owns one sandbox for its lifetime and replays batches of
    samples; the run fuses the metric judges after it, in the same actor (pipeline.stage.Fused)."""

    name = "replay"
    actor = True
    cfg: ReplayConfig
    allow_weak_sandbox: bool = False

    def setup(self, metrics: Any | None) -> None:
        # replay.sandbox picks the kind (default: the zygote); it refuses to start below
        # replay.min_sandbox_level unless the run was started with --allow-weak-sandbox.
        self.sandbox = make_sandbox(
            self.cfg.sandbox,
            sandbox_limits(self.cfg),
            uid=sandbox_uid(),
            min_level=self.cfg.min_sandbox_level,
            allow_weaker=self.allow_weak_sandbox,
            input_greys=True,  # the judges fused after this stage use them (S.INPUT_GREYS)
        )
        if metrics is not None:  # where this actor (and its sandbox) runs, for the manifest
            metrics.add_counters.remote("placement", {"replay": {ray.get_runtime_context().get_node_id(): 1}})
        check_sandbox_works(self.sandbox)
        self.sandbox_cpu = SandboxCpuMeter(self.sandbox)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [replay_row(r, self.sandbox) for r in rows]

    def extra_cpu_s(self) -> float:
        """The sandbox processes' CPU (:class:`SandboxCpuMeter`): the cells' own work."""
        return self.sandbox_cpu.take()


def ensure_sandbox_level(
    cfg: RunConfig, allow_weak_sandbox: bool = False, warn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Start a sandbox as configured and compare its layers with ``replay.min_sandbox_level``.

    Raises :class:`SandboxLevelError` (saying which layers are missing and what to do) when the
    level is not met, unless ``allow_weak_sandbox``. Returns the check for the manifest.
    """
    ok, report = check_level(cfg.replay)
    if not ok:
        if not allow_weak_sandbox:
            raise SandboxLevelError("refusing to replay untrusted code: " + report.advice())
        (warn or log.warning)(
            f"WEAK SANDBOX: {report.summary()}; missing: {', '.join(report.missing) or report.error}. "
            "Proceeding only because of --allow-weak-sandbox: the replayed code is less isolated than configured."
        )
    return report.as_dict()
