"""Config loading: typed, validated, errors that name the file and the key."""

from __future__ import annotations

import pytest

from rl_control.config import ConfigError, RunConfig, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env:\n  task: pendulum_swingup_novel\n  num_envs: 4\npolicy:\n  kind: lstm\n")
    cfg = load_config(path, ["algo.lr=1e-3", "env.randomization.perturbation.latency_steps=[0, 2]"])
    assert cfg.env.task == "pendulum_swingup_novel" and cfg.env.num_envs == 4
    assert cfg.policy.kind == "lstm" and cfg.algo.name == "ppo" and cfg.algo.lr == 1e-3
    assert cfg.env.randomization.perturbation.latency_steps == (0, 2)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["seed=3", "env.randomization.dynamics.mass_scale=[0.5, 1.5]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.digest() == cfg.digest()
    assert isinstance(again, RunConfig)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("env:\n  nmu_envs: 4\n", "env.nmu_envs: Extra inputs are not permitted"),
        ("env:\n  num_envs: many\n", "env.num_envs: Input should be a valid integer"),
        ("env:\n  num_envs: 0\n", "env.num_envs: Input should be greater than or equal to 1"),
        ("algo:\n  gamma: 1.5\n", "algo.ppo.gamma: Input should be less than or equal to 1"),
        ("env:\n  randomization:\n    dynamics:\n      mass_scale: [1.2, 0.8]\n",
         "env.randomization.dynamics.mass_scale"),
        ("policy:\n  kind: transformer\n", "policy.kind: Input should be 'mlp' or 'lstm'"),
        ("env:\n  num_envs: 4\n  caller_steps: true\n",
         "env: Value error, caller_steps needs 1 <= workers < num_envs, got workers=0, num_envs=4"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert fragment.replace("algo.ppo.", "algo.") in message.replace("algo.ppo.", "algo.")


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config(None, ["algo.lr"])
