"""A seventh quality dimension takes one judge file and one line (judges/__init__.py, module doc).

The judge file is the class below (a stand-in for judges/toy_brevity.py): it declares its
dimension, ``toy_brevity`` with the routing minimum 0.5 and the default ``below = rejected``. The
line is ``register(ToyBrevityJudge)`` in the fixture. Nothing else is edited, and every part that
depends on the dimensions follows, shown on real rows: records of the bundled corpus read by the
project's ingest, judged by the project's judges, routed by routing.route, written as hive shards,
read back by the manifest, the report, `explain` and `inspect`. The fixture unregisters the
dimension afterwards; the last test checks that it left nothing behind (it runs in the same process).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from judges import metric_judges, register, unregister
from judges.base import Verdict
from pipeline.cli import DEFAULT_N, app, cache_dir
from pipeline.config import ConfigError, IngestConfig, RunConfig, load_config
from pipeline.manifest import build_manifest, write_manifest
from pipeline.stages.ingest import plan_read_tasks, read_task
from pipeline.stages.judge import judge_row
from pipeline.tools.inspect import mean_scores_by_route
from pipeline.tools.report import routing_thresholds, write_report
from pipeline.tools.shards import SHARDS_DIR
from routing.policy import RoutingPolicy
from routing.route import decide
from schemas import sample as S
from schemas.dimensions import Dimension

TOY = "toy_brevity"
SIX = ("visual_gain", "coherence", "code_correctness", "scientific_accuracy", "alignment", "educational_value")
RECORDS = 12  # the first records of the bundled corpus: long (3-turn) and short (2-turn) reasonings


class ToyBrevityJudge:
    """Brevity (toy): 1 up to 120 words of reasoning, 120 / words above."""

    DIMENSION = Dimension(TOY, minimum=0.5, description="short reasoning; below: rejected")
    name = "toy/brevity"
    dimension = DIMENSION.name
    needs = (S.TURNS,)

    def judge(self, row: dict[str, Any]) -> Verdict:
        words = sum(len((t[S.TURN_REASONING] or "").split()) for t in row[S.TURNS] or [])
        return Verdict(min(1.0, 120 / words) if words else None, f"{words} words of reasoning")


@pytest.fixture
def toy():
    register(ToyBrevityJudge)  # the one line
    yield
    unregister(TOY)


@pytest.fixture(scope="module")
def corpus_rows(cache_root) -> list[dict[str, Any]]:
    """The first RECORDS records of the bundled corpus as canonical rows (pipeline.stages.ingest)."""
    corpus = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0" / "corpus.jsonl"
    tasks = plan_read_tasks([corpus], 4, limit=RECORDS)
    return [r for t in tasks for r in read_task(t, IngestConfig())]


def test_a_registered_dimension_flows_through_every_stage(toy, corpus_rows, tmp_path):
    # the schema: the five columns of the new dimension, after the six of each kind
    assert (*SIX, TOY) == S.DIMENSIONS
    for column, kind in ((S.score_column(TOY), pa.float64()), (S.explanation_column(TOY), pa.string()),
                         (S.metric_score_column(TOY), pa.float64()), (S.llm_score_column(TOY), pa.float64()),
                         (S.llm_status_column(TOY), pa.string())):
        assert S.SAMPLE_SCHEMA.field(column).type == kind
    assert tuple(S.score_column(d) for d in (*SIX, TOY)) == S.SCORE_COLUMNS

    # the judges: the default set has the toy judge last; judging fills its columns
    assert [j.dimension for j in metric_judges()] == list(S.DIMENSIONS)
    judges = metric_judges()
    rows = [judge_row(dict(r), judges) for r in corpus_rows]
    for r in rows:
        assert r[S.score_column(TOY)] is not None and r[S.metric_score_column(TOY)] == r[S.score_column(TOY)]
        assert r[S.explanation_column(TOY)].startswith("[toy/brevity] ")

    # the policy: its thresholds map and the config key min_toy_brevity (default: the declared minimum)
    policy = RoutingPolicy()
    assert policy.thresholds()[TOY] == 0.5 and list(policy.thresholds()) == list(S.DIMENSIONS)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"routing": {"min_toy_brevity": 0.7}}))
    assert load_config(config).routing.thresholds()[TOY] == 0.7
    config.write_text(yaml.safe_dump({"routing": {"min_toy_brevity": 1.5}}))
    with pytest.raises(ConfigError, match="routing.min_toy_brevity"):
        load_config(config)

    # routing: low_toy_brevity exactly for the rows scoring below the minimum, and those are rejected
    for r in rows:
        decision = decide(r, policy)
        low = r[S.score_column(TOY)] < 0.5
        assert ("low_toy_brevity" in decision.reasons) == low, (r[S.score_column(TOY)], decision)
        if low:
            assert decision.route == S.ROUTE_REJECTED
        r[S.ROUTE], r[S.ROUTE_REASONS] = decision.route, decision.reasons
    assert {r[S.score_column(TOY)] < 0.5 for r in rows} == {True, False}  # both sides are shown

    # written shards, the manifest and the report read back the dimension and its threshold
    out = tmp_path / "out"
    pq.write_to_dataset(S.to_table(rows), out / SHARDS_DIR, partition_cols=list(S.PARTITION_COLUMNS))
    cfg = RunConfig()
    manifest = build_manifest(out, "toy-run", cfg, ["corpus.jsonl"], len(rows), {}, time.time())
    write_manifest(out, manifest)
    assert manifest["config"]["routing"]["min_toy_brevity"] == 0.5
    assert manifest["judges"]["metric"] == list(S.DIMENSIONS)
    assert manifest["reasons"]["rejected"]["low_toy_brevity"] == sum(r[S.score_column(TOY)] < 0.5 for r in rows)
    assert routing_thresholds(manifest)[0][TOY] == 0.5
    page = write_report(out, samples=1).path.read_text()
    assert f'data-dimension="{TOY}" data-threshold="0.5"' in page
    assert "min_toy_brevity 0.5: below → rejected" in page

    # explain and inspect show its score
    cols, _ = mean_scores_by_route(out)
    assert TOY in cols
    explained = CliRunner().invoke(app, ["explain", str(out), rows[0][S.SAMPLE_ID]])
    assert explained.exit_code == 0, explained.output
    assert TOY in explained.output and "words of reasoning" in explained.output


def test_without_its_line_the_dimension_is_gone():
    """Unregistered, the toy dimension has no column, no judge, no threshold and no config key."""
    assert S.DIMENSIONS == SIX
    assert S.score_column(TOY) not in S.SAMPLE_SCHEMA.names
    assert [j.dimension for j in metric_judges()] == list(SIX)
    assert TOY not in RoutingPolicy().thresholds()
    with pytest.raises(ValueError, match="min_toy_brevity"):
        RoutingPolicy(min_toy_brevity=0.5)


def test_a_dimension_declares_valid_routing():
    """A declaration that could not be routed fails where it is written."""
    with pytest.raises(ValueError, match="within"):
        Dimension("toy", minimum=1.5, description="")
    with pytest.raises(ValueError, match="below"):
        Dimension("toy", minimum=0.5, description="", below="twi")
    with pytest.raises(ValueError, match="identifier"):
        Dimension("Toy Brevity", minimum=0.5, description="")


def test_the_six_keep_their_minimums():
    """The existing settings (min_visual_gain, ...) now come from the judges' declarations, unchanged."""
    assert RoutingPolicy().thresholds() == {"visual_gain": 0.15, "coherence": 0.4, "code_correctness": 0.6,
                                            "scientific_accuracy": 0.5, "alignment": 0.5, "educational_value": 0.0}
    assert RoutingPolicy(min_visual_gain=0.3).min_visual_gain == 0.3
