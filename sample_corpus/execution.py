"""The generator's own cells run in-process by the replay sandbox's cell runner, so that what a
record says a cell printed and wrote is what the replay will see.

:class:`CellSession` is one trajectory in a work dir of its own: ``input_<k>.png`` written there,
then every cell run by :class:`pipeline.sandbox.child.cell.CellRunner` (the code the sandbox's
worker runs a cell with: namespace, capture, traceback, images) with the sandbox's default
limits. What the worker sets up process-wide is missing here: the isolation, so this is for
TRUSTED code only (the generator's hostile cells are never passed here), and the display hooks
(``plt.show``, ``Image.show``, ``cv2.imshow`` are not captured: the corpus cells write files).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from pipeline.sandbox.base import SandboxLimits
from pipeline.sandbox.child.cell import CellRunner
from pipeline.sandbox.child.paths import PathMap


class CellSession:
    """The cells of one trajectory (TRUSTED code), run one after the other in ``workdir``.

    ``run`` returns what a record's observation holds: the cell's stdout followed by its
    traceback, and the PNG bytes of its images (the files it wrote or changed, sorted by path).
    """

    def __init__(self, workdir: Path, inputs: Sequence[bytes]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        names = []
        for k, data in enumerate(inputs):
            names.append(f"input_{k}.png")
            (self.workdir / names[-1]).write_bytes(data)
        work = str(self.workdir)
        self.runner = CellRunner(work, names, PathMap(work, {}), asdict(SandboxLimits()))
        self.cells = 0
        with contextlib.chdir(self.workdir):  # the runner loads the inputs from the work dir
            self.runner.build_namespace([])  # no notes: the generator's own PNGs always load

    def run(self, code: str) -> tuple[str, list[bytes]]:
        with contextlib.chdir(self.workdir):  # the cells' cwd, as in the sandbox
            result = self.runner.run(self.cells, code)
        self.cells += 1
        if isinstance(result.exception, KeyboardInterrupt):
            raise result.exception  # Ctrl-C stops the build: it is not the cell's error
        return result.stdout + result.error, [png for _, png in result.images]


def execute_cells(codes: Sequence[str], inputs: Sequence[bytes]) -> list[tuple[str, list[bytes]]]:
    """Run the cells of one trajectory in a fresh session (trusted code only)."""
    with tempfile.TemporaryDirectory(prefix="twi-sample-exec-") as tmp:
        session = CellSession(Path(tmp) / "work", inputs)
        return [session.run(code) for code in codes]
