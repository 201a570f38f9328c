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


def test_cluster_head_keeps_idle_task_workers_as_a_local_run_does():
    """The head's `ray start` sets the system config a local run sets (pipeline.ray_plan), and
    Ray's own command line accepts that command as written."""
    import shlex

    from ray.scripts.scripts import start

    from pipeline.ray_plan import LOCAL_SYSTEM_CONFIG

    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    heads = [shlex.split(c) for c in cfg["head_start_ray_commands"] if c.startswith("ray start")]
    assert len(heads) == 1, cfg["head_start_ray_commands"]
    argv = heads[0][2:]  # after "ray start"
    ctx = start.make_context("ray start", list(argv))  # Ray's click parser: types converted, nothing started
    assert ctx.params["head"] is True
    assert ctx.params["system_config"] == LOCAL_SYSTEM_CONFIG
    # worker nodes take the cluster's system config from the head: none of their own
    assert not any("--system-config" in c for c in cfg["worker_start_ray_commands"])
