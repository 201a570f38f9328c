"""bench/pipeline.py's corpus: (L) and (P) on the same records, none of them hostile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import IngestConfig
from pipeline.stages.ingest import plan_read_tasks, read_task
from sample_corpus.plan import case_plan
from schemas import sample as S


def test_without_hostile_corpus_is_the_first_n_non_hostile_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from bench.pipeline import corpus_path

    monkeypatch.setenv("TWI_CURATE_CACHE", str(tmp_path))
    n = 45  # the plan's first hostile records are 42-47: a larger corpus (51) is built and filtered
    assert sum(case == "hostile" for _, case in case_plan(n)) == 3
    corpus = corpus_path(n)
    source = tmp_path / "sample-corpus-n51-s0" / "corpus.jsonl"
    assert source.exists() and len(source.read_text().splitlines()) == 51

    records = corpus.read_text().splitlines()
    labels = [json.loads(x) for x in (corpus.parent / "labels.jsonl").read_text().splitlines()]
    assert len(records) == len(labels) == n
    assert not [lab for lab in labels if lab["case"] == "hostile"]
    src_labels = [json.loads(x) for x in (source.parent / "labels.jsonl").read_text().splitlines()]
    want = [r for r, lab in zip(source.read_text().splitlines(), src_labels, strict=True)
            if lab["case"] != "hostile"][:n]
    assert records == want

    # every record ingests with its images (the folder links the source's), labels aligned by sample_id
    rows = [r for t in plan_read_tasks([corpus], 8) for r in read_task(t, IngestConfig())]
    assert [r[S.INPUT_ERROR] for r in rows] == [None] * n
    assert [r[S.SAMPLE_ID] for r in rows] == [lab["sample_id"] for lab in labels]

    # cached: asked again, the same file, not rewritten
    mtime = corpus.stat().st_mtime_ns
    assert corpus_path(n) == corpus and corpus.stat().st_mtime_ns == mtime
    # --with-hostile: the sample corpus as built, its hostile records included
    plain = corpus_path(n, without_hostile=False)
    assert plain == tmp_path / "sample-corpus-n45-s0" / "corpus.jsonl"
    assert [json.loads(x)["case"] for x in (plain.parent / "labels.jsonl").read_text().splitlines()].count("hostile") == 3
