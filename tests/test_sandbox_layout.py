"""The sandbox's code layout: one definition of the parent<->child protocol, no private names
imported across modules, and a child that imports only its own modules (never the parent side)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sandbox import ProcessSandbox, SandboxLimits, ZygoteSandbox, protocol
from pipeline.sandbox.parent import INTERPRETER_FLAGS, RUNNER_PATH

SANDBOX_DIR = Path(protocol.__file__).parent
MODULES = sorted(SANDBOX_DIR.rglob("*.py"))
# What the child may import of the project: its own package, the protocol and the isolation steps.
CHILD_MODULES = {
    "pipeline",
    "pipeline.sandbox",
    "pipeline.sandbox.protocol",
    "pipeline.sandbox.isolation",
    "pipeline.sandbox.child",
    *(f"pipeline.sandbox.child.{p.stem}" for p in (SANDBOX_DIR / "child").glob("*.py") if p.stem != "__init__"),
}
PARENT_SIDE = ("ray", "pyarrow", "duckdb", "pipeline.sandbox.parent", "pipeline.sandbox.process",
               "pipeline.sandbox.zygote", "pipeline.sandbox.base", "pipeline.sandbox.cgroups")  # fmt: skip


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _project_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``pipeline...`` import, wherever it is in the file."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "pipeline"]
    return found


def test_protocol_is_defined_once():
    defined = {n for n in _top_level_names(_tree(SANDBOX_DIR / "protocol.py")) if not n.startswith("_")}
    assert {"HEADER", "EXIT_STATUS", "PID_REPLY", "STDERR_MARKER", "png_dimensions", "send_message"} <= defined
    for path in MODULES:
        if path.name == "protocol.py":
            continue
        tree = _tree(path)
        again = {n.lstrip("_") for n in _top_level_names(tree)} & defined
        assert not again, f"{path.relative_to(SANDBOX_DIR)} defines protocol names again: {sorted(again)}"
        text = path.read_text()
        for literal in ("struct.Struct(", "\\x89PNG", "[stderr]", "[output truncated"):
            assert literal not in text, f"{path.relative_to(SANDBOX_DIR)} writes {literal!r} itself"


def test_no_private_sandbox_names_imported_across_modules():
    root = SANDBOX_DIR.parents[1]
    for path in [*root.joinpath("pipeline").rglob("*.py"), *root.joinpath("tests").glob("*.py"), *root.joinpath("bench").glob("*.py")]:
        for module, names in _project_imports(_tree(path)):
            private = [n for n in names if n.startswith("_") and module.startswith("pipeline.sandbox")]
            assert not private, f"{path.name} imports private names from {module}: {private}"


def test_child_modules_import_only_child_protocol_and_isolation():
    for path in [*(SANDBOX_DIR / "child").glob("*.py"), SANDBOX_DIR / "protocol.py", SANDBOX_DIR / "isolation.py"]:
        for module, names in _project_imports(_tree(path)):
            targets = [f"{module}.{n}" for n in names] if module == "pipeline.sandbox" else [module]
            assert set(targets) <= CHILD_MODULES, f"{path.name} imports {targets}"


def _child_modules_after_start() -> dict:
    """Start the child's entry point as the parent does and report what it imported."""
    code = (
        "import json, runpy, sys\n"
        f"runner = runpy.run_path({str(RUNNER_PATH)!r}, run_name='child')\n"
        "runner['_bootstrap']()\n"
        "import pipeline.sandbox.child.init, pipeline.sandbox.child.zygote, pipeline.sandbox.child.probe\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'path': sys.path}))\n"
    )
    done = subprocess.run(
        [sys.executable, *INTERPRETER_FLAGS, "-c", code],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        cwd="/",
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


@pytest.mark.timeout(150)
def test_child_entry_point_imports_no_parent_side():
    seen = _child_modules_after_start()
    project = {m for m in seen["modules"] if m.split(".")[0] == "pipeline"}
    assert project == CHILD_MODULES
    assert not [m for m in PARENT_SIDE if m in seen["modules"]]
    root = str(SANDBOX_DIR.parents[1])
    assert root not in seen["path"] and str(SANDBOX_DIR) not in seen["path"]  # -P: nothing added


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox runs as root")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("level", [ProcessSandbox, ZygoteSandbox], ids=["process", "zygote"])
def test_running_child_holds_only_its_own_modules(level):
    uid = 45000 + os.getpid() % 5000
    box = level(SandboxLimits(cell_timeout_s=30.0, total_timeout_s=90.0), uid=uid, gid=uid)
    try:
        cells = [
            "import sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pipeline', 'ray', 'pyarrow', 'duckdb')))",
            "def boom():\n    raise ValueError('x')\nboom()",
        ]
        out = box.replay(cells, [])
    finally:
        box.close()
    assert [o.status for o in out] == ["ok", "error"], out
    # the running child holds its entry point's modules for this level (no probe, no zygote in
    # a process-level child) and nothing else of the project
    unused = {"pipeline.sandbox.child.probe"} | ({"pipeline.sandbox.child.zygote"} if level is ProcessSandbox else set())
    assert set(eval(out[0].stdout)) == CHILD_MODULES - unused  # noqa: S307 - a list of names we printed
    # the worker's own frames are cut from a cell's traceback
    assert 'File "<cell1>"' in out[1].error and "pipeline/sandbox" not in out[1].error
