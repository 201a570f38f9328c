"""What a sample corpus holds: its files, the seven cases with their expected routes, the six
disciplines, and which (discipline, case) each record gets."""

from __future__ import annotations

from schemas.sample import DISCIPLINE, SAMPLE_ID

# Bump when the generated content changes: cached corpora (ensure_sample_corpus) are rebuilt.
# 2: tracebacks name the cell as the sandbox does ("<cell0>", was "<cell>").
CORPUS_VERSION = "2"
DATASET_NAME = "twi-sample"
CORPUS_FILE = "corpus.jsonl"
LABELS_FILE = "labels.jsonl"
IMAGES_DIR = "images"
MARKER_FILE = ".sample_corpus.json"
LOCK_FILE = ".sample_corpus.lock"

CASES = ("zoom", "decorative", "failing_code", "redundant", "fabricated", "wrong_answer", "hostile")
EXPECTED_ROUTE = {
    "zoom": "twi",
    "decorative": "text",
    "redundant": "text",
    "failing_code": "rejected",
    "fabricated": "rejected",
    "wrong_answer": "rejected",
    "hostile": "rejected",
}
# Per discipline, records walk through this cycle (two genuine zooms per eight records).
CASE_CYCLE = (
    "zoom",
    "decorative",
    "zoom",
    "failing_code",
    "redundant",
    "fabricated",
    "wrong_answer",
    "hostile",
)
CORPUS_DISCIPLINES = ("mathematics", "physics", "chemistry", "astronomy", "geography", "biology")
ID_PREFIX = {
    "mathematics": "math",
    "physics": "phys",
    "chemistry": "chem",
    "astronomy": "astro",
    "geography": "geo",
    "biology": "bio",
}
# labels.jsonl keys (sample_id / discipline are the schema's column names)
LABEL_SAMPLE_ID = SAMPLE_ID
LABEL_EXPECTED_ROUTE = "expected_route"
LABEL_CASE = "case"
LABEL_DISCIPLINE = DISCIPLINE


def case_plan(n: int) -> list[tuple[str, str]]:
    """(discipline, case) of records 0..n-1: disciplines interleave, cases follow CASE_CYCLE."""
    nd, nc = len(CORPUS_DISCIPLINES), len(CASE_CYCLE)
    return [(CORPUS_DISCIPLINES[i % nd], CASE_CYCLE[(i // nd) % nc]) for i in range(n)]
