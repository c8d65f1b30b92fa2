"""ONNX export: one graph, metadata, parity gate, and the runtime policy on real rollouts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from deploy.export import ExportInfo, InferencePolicy, ParityError, export_policy, parity_check, to_onnx
from deploy.runtime import OnnxPolicy
from rl_control.config import PolicyConfig
from rl_control.evaluation import TorchPolicy, evaluate
from rl_control.networks import ActorCritic
from rl_control.runner import load_trained_policy
from sim.randomization import RandomizationConfig
from sim.tasks import make_env

INFO = ExportInfo(algorithm="ppo", task="pendulum_swingup_novel", config_hash="abc", train_steps=5, train_return=-1.0)


def _policy(kind: str, seed: int = 0) -> tuple[ActorCritic, object]:
    torch.manual_seed(seed)
    env = make_env("pendulum_swingup_novel")
    policy = ActorCritic(env.observation_space.shape[0], 1, PolicyConfig(kind=kind, lstm_hidden=16, hidden_sizes=(32,)))
    policy.normalizer.update(torch.randn(500, env.observation_space.shape[0]) * 0.7 + 0.2)
    with torch.no_grad():
        policy.policy_head.weight.mul_(100.0)  # make the untrained actor's actions large enough to matter
    policy.eval()
    return policy, env.interface


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_export_writes_checked_graph_with_metadata(tmp_path, kind):
    policy, interface = _policy(kind)
    out = tmp_path / "p.onnx"
    stats = export_policy(policy, interface, INFO, out, randomization=RandomizationConfig())
    assert stats["parity_steps"] >= 1000 and stats["parity_episodes"] >= 3
    assert stats["parity_max_abs_diff"] <= 1e-5
    model = onnx.load(out)
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["recurrent"] == ("lstm" if kind == "lstm" else "none")
    assert meta["algorithm"] == "ppo" and meta["obs_size"] == "3" and meta["action_size"] == "1"
    assert json.loads(meta["interface"])["joints"][0]["name"] == "hinge"
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if kind == "lstm":
        assert inputs == ["obs", "h_in", "c_in"] and outputs == ["action", "target", "h_out", "c_out"]
    else:
        assert inputs == ["obs"] and outputs == ["action", "target"]


def test_parity_gate_refuses_a_diverging_graph_and_says_where(tmp_path):
    policy, interface = _policy("lstm")
    module = InferencePolicy(policy, interface)
    other, _ = _policy("lstm", seed=1)
    wrong_bytes = to_onnx(InferencePolicy(other, interface), policy.obs_size, 16).SerializeToString()
    with pytest.raises(ParityError, match=r"diverge at episode 0, step 0 .*output 'action'"):
        parity_check(module, wrong_bytes, "pendulum_swingup_novel", RandomizationConfig())


def test_runtime_matches_torch_with_recurrent_state_and_reset():
    policy, interface = _policy("lstm")
    out_path = None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out_path = f"{d}/p.onnx"
        export_policy(policy, interface, INFO, out_path, min_steps=200)
        runtime = OnnxPolicy(out_path)
        reference = TorchPolicy(policy)
        env = make_env("pendulum_swingup_novel", RandomizationConfig())
        for episode in range(2):
            obs, _ = env.reset(seed=episode)
            runtime.reset()
            reference.reset()
            for _ in range(60):
                a, b = runtime.act(obs), reference.act(obs)
                np.testing.assert_allclose(a, b, atol=1e-5)
                obs, *_ = env.step(b)


def test_trained_policy_onnx_return_equals_torch_return(pendulum_run, pendulum_policy_onnx):
    _, policy, _ = load_trained_policy(pendulum_run)
    for randomization in (None, RandomizationConfig()):
        torch_result = evaluate(TorchPolicy(policy), "pendulum_swingup", 4, seed=77, randomization=randomization)
        onnx_result = evaluate(OnnxPolicy(pendulum_policy_onnx), "pendulum_swingup", 4, seed=77,
                               randomization=randomization)
        np.testing.assert_allclose(onnx_result.returns, torch_result.returns, rtol=1e-4)
    assert onnx_result.success_rate >= 0.5
