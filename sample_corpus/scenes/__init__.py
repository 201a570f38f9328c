"""The scenes, one module per discipline: each draws its large scene (``scene(rng, size)``, a
ground truth too small to read without zooming) and its small decorative sketch
(``decorative(rng)``, answerable from the question's text alone)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sample_corpus.drawing import Scene, pick
from sample_corpus.scenes import astronomy, biology, chemistry, geography, mathematics, physics

_SCENES: dict[str, Callable[[np.random.Generator, tuple[int, int]], Scene]] = {
    "mathematics": mathematics.scene,
    "physics": physics.scene,
    "chemistry": chemistry.scene,
    "astronomy": astronomy.scene,
    "geography": geography.scene,
    "biology": biology.scene,
}
_DECOS: dict[str, Callable[[np.random.Generator], Scene]] = {
    "mathematics": mathematics.decorative,
    "physics": physics.decorative,
    "chemistry": chemistry.decorative,
    "astronomy": astronomy.decorative,
    "geography": geography.decorative,
    "biology": biology.decorative,
}

# Image sizes by case: the genuine zooms (and the cases built like them) get the largest images.
_BIG_SIZES = ((3200, 2400), (3000, 3000), (3400, 2550), (3000, 2400))
_WIDE_SIZES = ((3000, 2250), (2800, 2100), (2600, 1950))
_MID_SIZES = ((2400, 1800), (2600, 1950), (3000, 2250), (2200, 2200))


def make_scene(discipline: str, case: str, rng: np.random.Generator) -> Scene:
    """The scene of one record: the discipline's decorative sketch for the decorative case, else
    its large scene at a size drawn for the case."""
    if case == "decorative":
        return _DECOS[discipline](rng)
    if case in ("zoom", "wrong_answer", "fabricated"):
        size = pick(rng, _BIG_SIZES)
    elif case == "failing_code":
        size = pick(rng, _WIDE_SIZES)
    else:
        size = pick(rng, _MID_SIZES)
    return _SCENES[discipline](rng, size)
