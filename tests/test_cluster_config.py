from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent


def test_ray_cluster_yaml_is_a_valid_launcher_config():
    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # Ray's own JSON-schema check; raises on error
    types = cfg["available_node_types"]
    assert types["judge_gpu"]["resources"]["GPU"] >= 1
    assert types["replay_cpu"]["resources"]["sandbox"] >= 1
    assert cfg["head_node_type"] in types
