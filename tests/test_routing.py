import pytest
import yaml

from pipeline.config import ConfigError, load_config
from routing.policy import RoutingPolicy
from routing.route import decide
from schemas import sample as S

GOOD = {
    "visual_gain": 0.9,
    "coherence": 0.9,
    "code_correctness": 1.0,
    "scientific_accuracy": 1.0,
    "alignment": 1.0,
    "educational_value": 0.8,
}


def row(replay_status="ok", images=True, input_error=None, **scores):
    r = S.empty_row()
    r.update({S.score_column(d): v for d, v in {**GOOD, **scores}.items()})
    r[S.REPLAY_STATUS] = replay_status
    r[S.IMAGES] = [{"name": "x"}] if images else []
    r[S.INPUT_ERROR] = input_error
    return r


P = RoutingPolicy()


def test_good_sample_is_twi():
    assert decide(row(), P).route == "twi"


def test_low_visual_gain_goes_to_text():
    d = decide(row(visual_gain=0.05), P)
    assert (d.route, d.reasons) == ("text", ["low_visual_gain"])


def test_no_images_goes_to_text():
    assert decide(row(images=False, visual_gain=None), P).reasons == ["no_images"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"input_error": "malformed_json"}, "invalid_input:malformed_json"),
        ({"replay_status": "forbidden", "code_correctness": 0.0}, "sandbox_violation"),
        ({"replay_status": "error", "code_correctness": 0.3}, "code_failed:error"),
        ({"replay_status": "ok", "code_correctness": 0.0}, "observation_mismatch"),
        ({"scientific_accuracy": 0.0}, "wrong_answer"),
        ({"coherence": 0.1}, "low_coherence"),
        ({"alignment": 0.2}, "low_alignment"),
    ],
)
def test_reject_reasons(kwargs, reason):
    d = decide(row(**kwargs), P)
    assert d.route == "rejected"
    assert reason in d.reasons


def test_all_reasons_are_collected():
    d = decide(row(scientific_accuracy=0.0, coherence=0.0, visual_gain=0.0), P)
    assert d.route == "rejected" and d.reasons == ["wrong_answer", "low_coherence"]


def test_null_scores_are_not_evidence():
    d = decide(row(scientific_accuracy=None, alignment=None), P)
    assert d.route == "twi"
    assert decide(row(scientific_accuracy=None), RoutingPolicy(reject_unverifiable=True)).reasons == [
        "unverifiable"
    ]


def test_threshold_in_policy_file_changes_route_without_code_change(tmp_path):
    sample = row(visual_gain=0.5)
    default = load_config(None)
    assert decide(sample, default.routing).route == "twi"
    cfg_file = tmp_path / "strict.yaml"
    cfg_file.write_text(yaml.safe_dump({"routing": {"min_visual_gain": 0.6}}))
    strict = load_config(cfg_file)
    assert decide(sample, strict.routing).route == "text"
    assert strict.config_hash() != default.config_hash()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"routing": {"min_visual_gain": 1.5}}, "routing.min_visual_gain"),
        ({"routing": {"min_visual_gian": 0.5}}, "routing.min_visual_gian"),
        ({"replay": {"cpus_per_actor": 0}}, "replay.cpus_per_actor"),
        ([1, 2], "must hold a mapping"),
    ],
)
def test_bad_config_is_refused_with_the_key_named(tmp_path, content, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=needle):
        load_config(f)


def test_missing_config_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_exact_duplicate_is_rejected_for_that_alone():
    """An exact duplicate is never replayed or judged (null scores): its only reason is the
    duplicate, even under a policy that rejects unverifiable samples."""
    dup = row(replay_status="not_run", **dict.fromkeys(GOOD))
    dup[S.DUPLICATE_OF] = "abc"
    for policy in (P, RoutingPolicy(reject_unverifiable=True)):
        d = decide(dup, policy)
        assert (d.route, d.reasons) == ("rejected", ["duplicate_of:abc"])


def test_thresholds_are_one_map_read_by_routing():
    """policy.thresholds() is the map dimension -> minimum (routing, manifest and report read it);
    a dimension without a special reason rejects with low_<dimension> below its minimum."""
    from routing.policy import RoutingPolicy

    policy = RoutingPolicy(min_coherence=0.7)
    assert list(policy.thresholds()) == list(S.DIMENSIONS) and policy.thresholds()["coherence"] == 0.7
    assert policy.thresholds()[S.VISUAL_GAIN] == policy.min_visual_gain
    assert decide(row(coherence=0.6), policy) == decide(row(coherence=0.6), RoutingPolicy(min_coherence=0.7))
    assert decide(row(coherence=0.6), policy).reasons == ["low_coherence"]
    assert decide(row(coherence=0.6), RoutingPolicy()).route == S.ROUTE_TWI  # default minimum 0.4
