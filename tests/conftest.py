"""Shared fixtures: a trained and exported pendulum policy for the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

PENDULUM_OVERRIDES = [
    "seed=3", "env.task=pendulum_swingup", "env.num_envs=8", "env.workers=2", "algo.gamma=0.98", "algo.lr=1e-3",
    "algo.reward_scale=0.1", "runner.total_steps=151552", "runner.eval_every=1000", "runner.eval_episodes=8",
]


@pytest.fixture(scope="session")
def pendulum_run(tmp_path_factory) -> Path:
    """A run folder with an MLP PPO policy trained on full-state pendulum_swingup (randomization on)."""
    from rl_control.config import load_config
    from rl_control.runner import Runner

    run_dir = tmp_path_factory.mktemp("pendulum_run")
    result = Runner(load_config(None, PENDULUM_OVERRIDES), run_dir, show_progress=False).train()
    assert result.final_eval["success_rate"] >= 0.5, f"fixture policy did not learn: {result.final_eval}"
    return run_dir


@pytest.fixture(scope="session")
def pendulum_policy_onnx(pendulum_run) -> Path:
    """The pendulum policy exported through the parity gate."""
    from rl_control.commands import export_run

    path, _ = export_run(pendulum_run)
    return path
