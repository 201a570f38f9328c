"""A procedurally generated, deterministic corpus of Thinking-with-Images trajectories (test and
benchmark data for the pipeline; ``twi-curate sample-corpus``).

Six disciplines (mathematics, physics, chemistry, astronomy, geography, biology), each with real
images whose ground truth is known by construction: geometry worksheets with tiny side/angle
labels, emission spectra with tiny wavelength annotations, titration curves with a tiny
equivalence-point annotation, star fields and micrographs with a marked box to count in, contour
maps with tiny spot heights. Every record follows one of seven *cases* (genuine zoom, decorative
image, failing code, redundant processing, fabricated observation, wrong answer, hostile code)
whose expected route is in ``EXPECTED_ROUTE``.

Observations are recorded faithfully: the generator runs each trusted cell with the replay
sandbox's own cell runner (:mod:`sample_corpus.execution`), in-process, in a temporary work dir
(``input_<k>.png`` in the cwd, globals ``image``, ``images``, ``image_paths``, state shared
between the cells of a trajectory, stdout captured per cell, the image files written during a
cell collected sorted by path, as PNG). Fabricated records deliberately record something else, and
hostile cells are NEVER executed: their observation is invented.

Output (``build_sample_corpus``)::

    out_dir/corpus.jsonl    native format (pipeline.formats.native), one record per line
    out_dir/images/*.png    input and observation images (paths in records are relative)
    out_dir/labels.jsonl    {"sample_id", "expected_route", "case", "discipline"} per record
    out_dir/.sample_corpus.json   marker {n, seed, version}, written last

Modules: :mod:`.plan` (files, cases, disciplines), :mod:`.scenes` (one module per discipline),
:mod:`.drawing` (what scenes and trajectories share), :mod:`.templates` (the cells' code, hostile
variants included), :mod:`.execution` (running the trusted cells), :mod:`.trajectory` (one record
per case), :mod:`.writer` (the folder, its marker and lock).
"""

from __future__ import annotations

from sample_corpus.plan import (
    CASE_CYCLE,
    CASES,
    CORPUS_DISCIPLINES,
    CORPUS_FILE,
    CORPUS_VERSION,
    DATASET_NAME,
    EXPECTED_ROUTE,
    ID_PREFIX,
    IMAGES_DIR,
    LABEL_CASE,
    LABEL_DISCIPLINE,
    LABEL_EXPECTED_ROUTE,
    LABEL_SAMPLE_ID,
    LABELS_FILE,
    LOCK_FILE,
    MARKER_FILE,
    case_plan,
)
from sample_corpus.templates import HOSTILE_ARTIFACTS
from sample_corpus.writer import build_sample_corpus, ensure_sample_corpus

__all__ = [
    "CASE_CYCLE",
    "CASES",
    "CORPUS_DISCIPLINES",
    "CORPUS_FILE",
    "CORPUS_VERSION",
    "DATASET_NAME",
    "EXPECTED_ROUTE",
    "HOSTILE_ARTIFACTS",
    "ID_PREFIX",
    "IMAGES_DIR",
    "LABEL_CASE",
    "LABEL_DISCIPLINE",
    "LABEL_EXPECTED_ROUTE",
    "LABEL_SAMPLE_ID",
    "LABELS_FILE",
    "LOCK_FILE",
    "MARKER_FILE",
    "build_sample_corpus",
    "case_plan",
    "ensure_sample_corpus",
]
