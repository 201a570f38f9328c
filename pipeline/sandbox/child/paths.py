"""Paths the trajectory's code expects, mapped into the worker's work dir."""

from __future__ import annotations

import ast
import os
import shutil

# Thyme writes its results under /mnt/data/temp_processed_images/ and opens the input image at the
# path from its prompt (an absolute path on the machine that generated the data). Neither exists
# here, so the worker maps them into the work dir: string constants in the cell that name an
# input's original path, or lie under OUTPUT_ROOT, are redirected before the cell is compiled
# (the stored code is never changed), and the work-dir paths are written back to the original
# ones in what the cell prints, so the replayed text compares with the recorded observation.
OUTPUT_ROOT = "/mnt/data"
OUTPUT_DIRS = ("temp_processed_images",)


class PathMap:
    """Where the trajectory's paths live in the work dir.

    * an input's original path (absolute, e.g. Thyme's ``/eval/17127.jpg``, or relative) named by
      a string constant of a cell is redirected to the input's copy in the work dir;
    * every input is also present in the work dir (the cells' cwd) under its original relative
      path (``images/stars.png``) and its bare file name (``stars.png``), so paths the code builds
      at run time resolve too (hard links: like the one file of the original machine, a cell that
      overwrites it changes what every name reads);
    * ``/mnt/data/...`` (Thyme's output folder) is redirected into the work dir.
    """

    def __init__(self, work_dir: str, originals: dict[str, str]) -> None:
        self.work_dir = work_dir.rstrip(os.sep)
        self.output_root = os.path.join(self.work_dir, OUTPUT_ROOT.strip("/"))
        # original path as the trajectory wrote it -> the input's path in the work dir
        self.inputs = {o: os.path.join(self.work_dir, n) for o, n in originals.items() if o}
        taken = set(originals.values())
        self.aliases: dict[str, str] = {}  # relative alias in the work dir -> input file name
        for original, name in originals.items():
            for alias in _relative_aliases(original):
                if alias not in taken:
                    taken.add(alias)
                    self.aliases[alias] = name

    def prepare(self) -> None:
        for name in OUTPUT_DIRS:
            os.makedirs(os.path.join(self.output_root, name), exist_ok=True)
        for alias, name in self.aliases.items():
            target = os.path.join(self.work_dir, alias)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                os.link(os.path.join(self.work_dir, name), target)
            except OSError:
                shutil.copyfile(os.path.join(self.work_dir, name), target)

    def map(self, text: str) -> str:
        if text in self.inputs:
            return self.inputs[text]
        if text == OUTPUT_ROOT or text.startswith(OUTPUT_ROOT + "/"):
            return self.output_root + text[len(OUTPUT_ROOT) :]
        return text

    def unmap(self, text: str) -> str:
        """Work-dir paths back to the trajectory's own, in printed output."""
        for original, mapped in sorted(self.inputs.items(), key=lambda kv: -len(kv[1])):
            text = text.replace(mapped, original)
        return text.replace(self.output_root, OUTPUT_ROOT)

    def rewrite(self, tree):
        """Redirect the string constants of a parsed cell (in place); returns the tree."""
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                node.value = self.map(node.value)
        return tree


def _relative_aliases(original: str) -> list[str]:
    """Work-dir-relative names an input is also reachable by: its relative path (normalised,
    never escaping the work dir) and its bare file name."""
    if not original or original.startswith(("data:", "http://", "https://")) or "\x00" in original:
        return []
    original = original.removeprefix("file://")
    out = []
    if not os.path.isabs(original):
        rel = os.path.normpath(original)
        if not rel.startswith("..") and rel != "." and not rel.startswith(OUTPUT_ROOT.strip("/")):
            out.append(rel)
    base = os.path.basename(original)
    if base and base not in (".", ".."):
        out.append(base)
    return list(dict.fromkeys(a for a in out if len(a) < 256))

