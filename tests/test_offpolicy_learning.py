"""Off-policy runner, checkpoints, export and learning checks (SAC, TD3, TQC, discrete and recurrent SAC)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploy.export import ExportInfo, export_policy
from deploy.runtime import OnnxPolicy
from rl_control.config import load_config
from rl_control.evaluation import TorchPolicy
from rl_control.metrics import read_metrics
from rl_control.offpolicy_runner import REPLAY_NAME, OffPolicyRunner
from rl_control.replay import TRANSITION
from rl_control.runner import Runner, load_trained_policy, make_runner, resume_runner
from sim.tasks import make_env

TINY = ["env.num_envs=2", "env.workers=0", "policy.hidden_sizes=[32, 32]", "policy.activation=relu",
        "algo.warmup_steps=100", "algo.iteration_steps=100", "algo.batch_size=64", "runner.eval_episodes=1"]


def _train(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[OffPolicyRunner, object]:
    cfg = load_config(None, overrides)
    run_dir = tmp_path / name
    run_dir.mkdir()
    runner = make_runner(cfg, run_dir, show_progress=False)
    assert isinstance(runner, OffPolicyRunner)
    return runner, runner.train()


# ---- fast checks --------------------------------------------------------------------------------------------
def test_make_runner_dispatches_on_the_algorithm_and_ppo_stays_the_default(tmp_path):
    cfg = load_config(None, ["algo.lr=1e-3", "env.num_envs=1"])
    assert cfg.algo.name == "ppo"
    (tmp_path / "ppo").mkdir()
    runner = make_runner(cfg, tmp_path / "ppo", show_progress=False)
    assert type(runner) is Runner
    runner.venv.close()
    for name in ("sac", "td3", "tqc"):
        (tmp_path / name).mkdir()
        r = make_runner(load_config(None, [f"algo.name={name}", "env.num_envs=1"]), tmp_path / name, False)
        assert type(r) is OffPolicyRunner and r.algo.__class__.__name__ == name.upper()
        r.venv.close()


RECURRENT_SAC = ["policy.kind=lstm", "policy.lstm_hidden=16", "algo.burn_in=4", "algo.sequence_length=8",
                 "algo.sequences_per_batch=8"]


@pytest.mark.parametrize(("algo", "task", "extra"), [
    ("sac", "pendulum_swingup", ["algo.n_step=2"]),
    ("td3", "pendulum_swingup", ["algo.n_step=2"]),
    ("tqc", "pendulum_swingup", ["algo.n_step=2", "algo.n_critics=3", "algo.n_quantiles=5",
                                 "algo.top_quantiles_to_drop=1"]),
    ("sac", "CartPole-v1", ["algo.n_step=2", "env.randomization.enabled=false"]),  # discrete SAC
    ("sac", "pendulum_swingup_novel", RECURRENT_SAC),  # recurrent: one-step targets only
    # bfloat16 hidden products: quantile outputs, per-action Q values, and the recurrent critic's heads.
    ("tqc", "pendulum_swingup", ["algo.hidden_matmul=bfloat16", "algo.n_critics=3", "algo.n_quantiles=5"]),
    ("sac", "CartPole-v1", ["algo.hidden_matmul=bfloat16", "env.randomization.enabled=false"]),
    ("sac", "pendulum_swingup_novel", [*RECURRENT_SAC, "algo.hidden_matmul=bfloat16"]),
])
def test_every_variant_runs_logs_and_round_trips_through_its_checkpoint(tmp_path, algo, task, extra):
    runner, result = _train(tmp_path, [f"algo.name={algo}", f"env.task={task}", "runner.total_steps=400",
                                       *TINY, *extra])
    assert result.global_step == 400 and not result.interrupted
    records = read_metrics(runner.run_dir)
    assert [r["step"] for r in records] == [100, 200, 300, 400]
    # 100 warm-up steps with random actions; learning starts after the last of them, then utd 1.
    assert [r["updates"] for r in records] == [2, 100, 100, 100]
    assert np.isfinite(records[-1]["loss/critic"]) and "eval/mean_return" in records[-1]
    resumed = resume_runner(runner.run_dir, show_progress=False)
    for a, b in zip(runner.algo.state_dict()["critic_target"].values(),
                    resumed.algo.state_dict()["critic_target"].values(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed.global_step == 400 and resumed.np_rng.random() == runner.np_rng.random()
    resumed.venv.close()
    cfg, actor, ckpt = load_trained_policy(runner.run_dir)
    assert ckpt["config_hash"] == cfg.digest()
    env = make_env(task)
    obs, _ = env.reset(seed=0)
    action = TorchPolicy(actor).act(obs)
    assert env.action_space.contains(action.astype(env.action_space.dtype))
    env.close()


def test_same_seed_gives_the_same_run(tmp_path):
    overrides = ["algo.name=sac", "env.task=pendulum_swingup", "runner.total_steps=300", *TINY]
    a, _ = _train(tmp_path, overrides, "a")
    b, _ = _train(tmp_path, overrides, "b")
    for x, y in zip(a.algo.actor.state_dict().values(), b.algo.actor.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y)


def test_replay_is_checkpointed_only_when_asked_and_restored(tmp_path):
    base = ["algo.name=sac", "env.task=pendulum_swingup", "runner.total_steps=300", *TINY]
    runner, _ = _train(tmp_path, base, "plain")
    assert not (runner.run_dir / REPLAY_NAME).exists()
    runner, _ = _train(tmp_path, [*base, "algo.save_replay=true"], "with_replay")
    assert (runner.run_dir / REPLAY_NAME).is_file()
    resumed = OffPolicyRunner.resume(runner.run_dir, show_progress=False)
    assert resumed.replay.added == runner.replay.added == 300
    np.testing.assert_array_equal(resumed.replay.obs, runner.replay.obs)
    assert len(resumed.replay) == len(runner.replay)
    resumed.venv.close()
    # A fresh episode start cuts the in-flight ones: their last transition is truncated, bootstrapping from
    # the observation that was at the head.
    resumed.replay.start(np.zeros((2, resumed.replay.obs_size), np.float32))
    prev = (runner.replay.head - 1) % runner.replay.rows
    assert (resumed.replay.flags[prev, [0, 1]] & TRANSITION).all()
    assert (resumed.replay.head == (runner.replay.head + 1) % runner.replay.rows).all()


def test_sigterm_saves_at_a_whole_step_and_resume_continues_without_gap(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "env: {task: pendulum_swingup, num_envs: 2, workers: 0}\n"
        "policy: {hidden_sizes: [32, 32], activation: relu}\n"
        "algo: {name: sac, warmup_steps: 200, iteration_steps: 100, batch_size: 64}\n"
        "runner: {total_steps: 3000, checkpoint_every: 1000, eval_every: 1000, eval_episodes: 1}\n"
    )
    cmd = [sys.executable, "-m", "rl_control.cli", "train", str(config), "--runs", str(tmp_path), "--name", "r"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "r"
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(run_dir)) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    ckpt = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)
    stopped = ckpt["global_step"]
    assert 500 <= stopped < 3000 and stopped % 2 == 0
    resumed = subprocess.run([sys.executable, "-m", "rl_control.cli", "train", "--resume", str(run_dir)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["step"] for r in read_metrics(run_dir)] == [100 * k for k in range(1, 31)]  # no gap, no repeat


def test_sac_policy_exports_through_the_parity_gate(tmp_path):
    runner, _ = _train(tmp_path, ["algo.name=sac", "env.task=pendulum_swingup", "runner.total_steps=300", *TINY])
    cfg, actor, ckpt = load_trained_policy(runner.run_dir)
    with torch.no_grad():  # make the squashing matter: means far outside [-1, 1] before tanh
        actor.policy_head.weight.mul_(30.0)
    env = make_env(cfg.env.task)
    out = tmp_path / "sac.onnx"
    info = ExportInfo(algorithm="sac", task=cfg.env.task, config_hash=cfg.digest(), train_steps=300, train_return=0.0)
    stats = export_policy(actor, env.unwrapped.interface, info, out, randomization=cfg.env.randomization)
    assert stats["parity_steps"] >= 1000 and stats["parity_max_abs_diff"] <= 1e-5
    model = onnx.load(out)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["algorithm"] == "sac" and meta["action_kind"] == "continuous" and meta["recurrent"] == "none"
    assert [o.name for o in model.graph.output] == ["action", "target"]
    onnx_policy, torch_policy = OnnxPolicy(out), TorchPolicy(actor)
    obs, _ = env.reset(seed=3)
    saturated = 0
    for _ in range(50):
        a_onnx, a_torch = onnx_policy.act(obs), torch_policy.act(obs)
        np.testing.assert_allclose(a_onnx, a_torch, atol=1e-5)
        assert np.all(np.abs(a_torch) <= 1.0)  # tanh(mean) scaled into the box, never clipped beyond it
        saturated += int(np.abs(a_torch[0]) > 0.99)
        obs, *_ = env.step(a_torch)
    assert saturated > 0
    env.close()


# ---- learning checks ---------------------------------------------------------------------------------------
# Seeded and deterministic (workers=0, one torch thread). Measured on the 2-core machine (shared, loaded)
# with exactly these settings; the numbers are in each test's comment.
PENDULUM = ["seed=0", "env.task=Pendulum-v1", "env.randomization.enabled=false", "env.num_envs=1",
            "env.workers=0", "policy.hidden_sizes=[64, 64]", "policy.activation=relu",
            "algo.warmup_steps=1000", "algo.iteration_steps=2000", "algo.actor_lr=1e-3", "algo.critic_lr=1e-3",
            "runner.eval_every=100", "runner.eval_episodes=10"]


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "steps", "extra"), [
    ("sac", 10_000, ["algo.alpha_lr=1e-3"]),  # measured: eval -110.3 at 10k (-110.7 at 20k); ~1 min
    # Hidden-to-hidden products in bfloat16 (algo.hidden_matmul): the same bar. Measured: eval -112.3 at 10k
    # (float32: -109.7, same session).
    ("sac", 10_000, ["algo.alpha_lr=1e-3", "algo.hidden_matmul=bfloat16"]),
    ("td3", 8_000, []),  # measured: eval -114.5 at 8k (-120.5 at 16k); ~1 min
    ("tqc", 8_000, ["algo.alpha_lr=1e-3"]),  # 5 critics x 25 quantiles; measured: eval -110.5 at 8k; ~2 min
])
def test_reaches_minus_200_on_pendulum_within_20k_steps(tmp_path, algo, steps, extra):
    _, result = _train(tmp_path, [*PENDULUM, f"algo.name={algo}", f"runner.total_steps={steps}", *extra])
    assert result.final_eval["mean_return"] >= -200, result.final_eval


def test_recurrent_sac_refuses_n_step_returns(tmp_path):
    with pytest.raises(ValueError, match="algo.n_step=1"):
        _train(tmp_path, ["algo.name=sac", "env.task=pendulum_swingup_novel", "algo.n_step=3", *TINY,
                          *RECURRENT_SAC])


@pytest.mark.slow
def test_discrete_sac_solves_cartpole(tmp_path):
    # Exact expectations over the 2 actions; Q clipped to the return bounds [0, 1/(1-gamma)] of reward 1.
    # Measured: eval 500 at 10k steps (and at 15k, 20k, 25k, 30k); ~1.5 min.
    _, result = _train(tmp_path, [
        "seed=0", "env.task=CartPole-v1", "env.randomization.enabled=false", "env.num_envs=1", "env.workers=0",
        "algo.name=sac", "policy.hidden_sizes=[64, 64]", "policy.activation=relu", "algo.warmup_steps=1000",
        "algo.iteration_steps=2500", "algo.actor_lr=3e-4", "algo.critic_lr=1e-3", "algo.alpha_lr=3e-4",
        "algo.target_entropy_ratio=0.3", "algo.reward_bounds=[0, 1]", "runner.total_steps=10000",
        "runner.eval_every=100", "runner.eval_episodes=5"])
    assert result.final_eval["mean_return"] >= 450, result.final_eval


@pytest.mark.slow
def test_recurrent_sac_learns_no_velocity_swingup_where_mlp_sac_does_not(tmp_path):
    """LSTM SAC vs MLP SAC, same budget (24k env steps, 22k updates) on encoder-only sensing.

    Target entropy -2 (not -|A| = -1): a swing-up wants saturated, bang-bang torques, and at -1 the
    temperature rose (0.2 -> 0.42) to hold the squashed policy off the bounds while the evaluation return
    swung; one update per env step instead of 0.5. Measured with these settings (2026-11-25, evaluations
    every 8k steps, ad hoc): LSTM seeds 0 / 1 / 2 at 24k: -196 / -177 / -266, success 1.0 each (at 16k:
    1.0 / 1.0 / 0.9); MLP seed 1: -1477, success 0.0. The previous settings (target -1, 0.5 updates per step,
    32k steps) passed with seed 1 on one CPU and failed with it on another (-816, success 0.0): float
    rounding moved that run across the edge of learning. ~4.5 min for both runs.
    """
    common = ["seed=1", "env.task=pendulum_swingup_novel", "env.num_envs=2", "env.workers=0", "algo.name=sac",
              "algo.warmup_steps=2000", "algo.iteration_steps=4000", "algo.utd_ratio=1.0", "algo.gamma=0.98",
              "algo.actor_lr=1e-3", "algo.critic_lr=1e-3", "algo.alpha_lr=1e-3", "algo.target_entropy=-2",
              "algo.burn_in=8", "algo.sequence_length=16", "algo.sequences_per_batch=32", "policy.lstm_hidden=64",
              "policy.hidden_sizes=[64, 64]", "policy.activation=relu", "runner.total_steps=24000",
              "runner.eval_every=100", "runner.eval_episodes=10"]
    _, lstm = _train(tmp_path, [*common, "policy.kind=lstm"], "lstm")
    _, mlp = _train(tmp_path, [*common, "policy.kind=mlp"], "mlp")
    assert lstm.final_eval["success_rate"] >= 0.6, lstm.final_eval
    assert mlp.final_eval["success_rate"] <= 0.25, mlp.final_eval
    assert lstm.final_eval["mean_return"] > mlp.final_eval["mean_return"] + 300


@pytest.mark.parametrize(("kind", "task", "lstm"), [
    ("squashed_gaussian", "pendulum_swingup_novel", True),  # recurrent SAC
    ("deterministic", "pendulum_swingup", False),  # TD3
    ("categorical", "CartPole-v1", False),  # discrete SAC: action index, no target output
])
def test_every_actor_kind_exports_through_the_parity_gate(tmp_path, kind, task, lstm):
    from rl_control.config import PolicyConfig
    from rl_control.offpolicy_networks import OffPolicyActor

    torch.manual_seed(0)
    env = make_env(task)
    space = env.action_space
    discrete = kind == "categorical"
    actor = OffPolicyActor(env.observation_space.shape[0], int(space.n) if discrete else space.shape[0],
                           PolicyConfig(kind="lstm" if lstm else "mlp", lstm_hidden=16, hidden_sizes=(32,)), kind,
                           None if discrete else space.low, None if discrete else space.high)
    actor.normalizer.update(torch.randn(500, actor.obs_size) * 0.5 + 0.1)
    with torch.no_grad():
        actor.policy_head.weight.mul_(20.0)
    actor.eval()
    interface = getattr(env.unwrapped, "interface", None)
    info = ExportInfo(algorithm="td3" if kind == "deterministic" else "sac", task=task, config_hash="x",
                      train_steps=0, train_return=0.0)
    stats = export_policy(actor, interface, info, tmp_path / "p.onnx")
    assert stats["parity_max_abs_diff"] <= 1e-5 and stats["parity_episodes"] >= 2
    model = onnx.load(tmp_path / "p.onnx")
    outputs = [o.name for o in model.graph.output]
    expected = ["action"] + ([] if discrete else ["target"]) + (["h_out", "c_out"] if lstm else [])
    assert outputs == expected
    env.close()


def test_offpolicy_benchmark_quick_mode_runs(tmp_path):
    """``rlctl bench train-offpolicy --quick`` works (speed is not asserted; peers may be missing here)."""
    import argparse

    from rl_control.bench.train_offpolicy import run_offpolicy_bench

    args = argparse.Namespace(algos="sac", parts="throughput,learning", envs="Pendulum-v1", rounds=1, steps=0,
                              seeds=1, quick=True, worker=None, job=None)
    report = run_offpolicy_bench(args)
    ours = report["results"]["throughput"]["Pendulum-v1/sac"]["ours"]
    assert ours["updates_per_cpu_s"]["median"] > 0 and ours["runs"][0]["updates"] == 50
    assert np.isfinite(report["results"]["learning"]["sac"]["ours"]["return_median"])
    assert "sb3" in report["results"]["learning"]["sac"] and "environment" in report
