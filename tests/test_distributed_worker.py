"""The Ray backend's pieces without a cluster (issue 8): a rollout worker collects exactly what the local
runner collects, and the learner reassembles worker slices into the same buffer; the same for the off-policy
transition worker and the replay buffer.

The two-node cluster test (tests/test_distributed.py) covers Ray itself; these run in seconds.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from rl_control.buffers import RolloutBuffer
from rl_control.config import ConfigError, load_config
from rl_control.distributed.ray_offpolicy import CHUNK_FIELDS, TransitionWorker, add_chunks
from rl_control.distributed.ray_rollout import RolloutWorker, fill_buffer, policy_weights, split_envs
from rl_control.normalizer import RewardScaler
from rl_control.offpolicy_runner import OffPolicyRunner
from rl_control.replay import TRUNCATED, ReplayBuffer
from rl_control.runner import Runner, record_episodes

FIELDS = ("obs", "actions", "log_probs", "values", "rewards", "terminated", "truncated", "final_values", "starts",
          "out", "advantages", "returns")


def test_split_envs_is_contiguous_and_balanced() -> None:
    assert split_envs(4, 2) == [(0, 2), (2, 4)]
    assert split_envs(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_envs(3, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="at least one"):
        split_envs(2, 3)


def test_config_rejects_what_the_ray_backend_cannot_do() -> None:
    assert load_config(None).distributed.backend == "local"
    with pytest.raises(ConfigError, match="distributed.workers=9 exceeds env.num_envs=8"):
        load_config(None, ["distributed.backend=ray", "distributed.workers=9"])
    for name in ("sac", "td3", "tqc"):  # off-policy MLP actors stream transitions (ray_offpolicy)
        assert load_config(None, ["distributed.backend=ray", f"algo.name={name}"]).distributed.backend == "ray"
    with pytest.raises(ConfigError, match="needs policy.kind=mlp"):
        load_config(None, ["distributed.backend=ray", "algo.name=sac", "policy.kind=lstm"])
    with pytest.raises(ConfigError, match="distributed.backend"):
        load_config(None, ["distributed.backend=spark"])


def _empty_buffer(runner: Runner) -> RolloutBuffer:
    p, cfg = runner.policy, runner.cfg
    return RolloutBuffer(cfg.algo.rollout_steps, cfg.env.num_envs, p.obs_size,
                         () if p.discrete else (p.action_size,), p.action_size, p.state_shape_per_env)


def _split(result: dict, cut: int) -> list[dict]:
    """One worker's result over envs [0, n) as two workers' results over [0, cut) and [cut, n)."""
    parts = []
    for sl in (slice(0, cut), slice(cut, None)):
        part = dict(result)
        for name in ("obs", "actions", "log_probs", "values", "rewards", "final_values", "terminated", "truncated",
                     "starts", "out"):
            part[name] = np.ascontiguousarray(result[name][:, sl])
        part["last_values"] = result["last_values"][sl]
        part["states"] = None if result["states"] is None else np.ascontiguousarray(result["states"][:, :, :, sl])
        part["episodes"] = {"return": [], "length": [], "success": []} if sl.start else result["episodes"]
        parts.append(part)
    return parts


@pytest.mark.parametrize(("task", "kind"), [("Pendulum-v1", "mlp"), ("Pendulum-v1", "lstm"), ("CartPole-v1", "mlp")])
def test_worker_rollouts_equal_local_collection(task: str, kind: str, tmp_path: Path) -> None:
    """Same seeds and weights: the worker's data, once assembled, is the local runner's buffer bit for bit.

    Pendulum-v1 truncates at 200 steps (4 iterations of 64 cover a truncation bootstrap); CartPole-v1 has
    discrete actions and early terminations. Weights change between iterations, as after an update.
    """
    cfg = load_config(None, [
        "seed=5", f"env.task={task}", "env.num_envs=3", "env.workers=0", "env.randomization.enabled=false",
        f"policy.kind={kind}", "algo.rollout_steps=64", "algo.normalize_rewards=true", "algo.reward_scale=0.5",
    ])
    runner = Runner(cfg, tmp_path, show_progress=False)
    worker = RolloutWorker(cfg, 0, 3, seed=cfg.seed, rng_seed=cfg.seed)  # the runner's generator seed
    try:
        obs, _ = runner.venv.reset(seed=cfg.seed)
        starts, state = torch.ones(3, dtype=torch.bool), runner.policy.initial_state(3)
        scalers = (RewardScaler(3, cfg.algo.gamma), RewardScaler(3, cfg.algo.gamma))
        saw_truncation, episodes = False, 0
        for _ in range(4):
            local, whole, split = _empty_buffer(runner), _empty_buffer(runner), _empty_buffer(runner)
            stats_local = {k: deque() for k in ("return", "length", "success")}
            stats_split = {k: deque() for k in ("return", "length", "success")}
            obs, starts, state, terms_local = runner._collect(local, obs, starts, state, stats_local)
            result = worker.rollout(policy_weights(runner.policy), cfg.algo.rollout_steps)
            fill_buffer(whole, [(0, 3)], [result], cfg, scalers[0], {k: deque() for k in stats_split})
            terms_split = fill_buffer(split, [(0, 1), (1, 3)], _split(result, 1), cfg, scalers[1], stats_split)
            for name in FIELDS:
                assert torch.equal(getattr(whole, name), getattr(local, name)), name
                assert torch.equal(getattr(split, name), getattr(local, name)), name
            if local.states is not None:
                assert torch.equal(whole.states, local.states) and torch.equal(split.states, local.states)
            assert list(stats_split["return"]) == list(stats_local["return"])
            assert terms_split.keys() == terms_local.keys()
            for key, value in terms_local.items():
                assert terms_split[key] == pytest.approx(value, rel=1e-12)
            saw_truncation |= bool(local.truncated.any())
            episodes += len(stats_local["return"])
            with torch.no_grad():  # a new policy, as after an update: the worker must pick it up
                for p in runner.policy.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        assert saw_truncation if task == "Pendulum-v1" else episodes > 0  # the episode-end paths ran
    finally:
        worker.close()
        runner.venv.close()


# ---- off-policy: transition worker ---------------------------------------------------------------------------
def _split_chunk(result: dict, cut: int) -> list[dict]:
    """One transition worker's chunk over envs [0, n) as two workers' chunks over [0, cut) and [cut, n)."""
    parts = []
    for sl in (slice(0, cut), slice(cut, None)):
        part = {name: np.ascontiguousarray(result[name][:, sl]) for name in CHUNK_FIELDS}
        part["last_obs"] = result["last_obs"][sl]
        part["episodes"] = {"return": [], "length": [], "success": []} if sl.start else result["episodes"]
        part["term_sums"] = {}
        parts.append(part)
    return parts


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_transition_worker_equals_local_offpolicy_collection(algo: str, tmp_path: Path) -> None:
    """Same seeds and weights: the worker's transitions are the local runner's, and reassembled from two
    workers they fill the replay buffer bit for bit as local collection does.

    Pendulum-v1 truncates at 200 steps: 3 chunks of 70 vector steps cover the warm-up's random actions (the
    first 40), exploration, and a truncation with its real final observation. Weights change between chunks.
    """
    N, T = 3, 70
    cfg = load_config(None, [
        f"algo.name={algo}", "seed=4", "env.task=Pendulum-v1", f"env.num_envs={N}", "env.workers=0",
        "env.randomization.enabled=false", "policy.hidden_sizes=[32, 32]", "algo.warmup_steps=120",
        "algo.reward_scale=0.5", "algo.buffer_size=1500",
    ])
    runner = OffPolicyRunner(cfg, tmp_path, show_progress=False)
    worker = TransitionWorker(cfg, 0, N, seed=cfg.seed, rng_seed=cfg.seed)  # the runner's generator seeds
    a = cfg.algo
    streamed = ReplayBuffer(a.buffer_size, N, runner.replay.obs_size, runner.replay.action_shape, a.gamma)
    try:
        obs, _ = runner.venv.reset(seed=cfg.seed)
        runner.replay.start(obs)
        streamed.start(worker.obs)
        starts, local_episodes, streamed_episodes = torch.ones(N, dtype=torch.bool), {}, {}
        for k in ("return", "length", "success"):
            local_episodes[k], streamed_episodes[k] = deque(), deque()
        saw_truncation = False
        for _ in range(3):
            random_steps = max(0, -(-(a.warmup_steps - runner.global_step) // N))
            result = worker.collect(policy_weights(runner.policy), T, min(T, random_steps))
            for t in range(T):  # the local loop of OffPolicyRunner.train, without updates
                actions, _ = runner._act(obs, None, starts)
                next_obs, reward, term, trunc, info = runner.venv.step(runner.algo.env_actions(actions))
                runner.replay.add(actions.numpy(), reward * a.reward_scale, term, trunc, next_obs, info["final_obs"])
                record_episodes(info, term | trunc, local_episodes)
                real_next = np.where((term | trunc)[:, None], info["final_obs"], next_obs)
                for name, local in (("obs", obs), ("actions", actions.numpy()), ("rewards", reward),
                                    ("next_obs", real_next), ("terminated", term), ("truncated", trunc)):
                    np.testing.assert_array_equal(result[name][t], local, err_msg=f"{name} at step {t}")
                saw_truncation |= bool(trunc.any())
                starts, obs = torch.from_numpy(term | trunc), next_obs
                runner.global_step += N
            np.testing.assert_array_equal(result["last_obs"], obs)
            add_chunks(streamed, [(0, 1), (1, N)], _split_chunk(result, 1), a.reward_scale, streamed_episodes)
            for name in ("obs", "actions", "rewards", "flags", "head", "filled"):
                np.testing.assert_array_equal(getattr(streamed, name), getattr(runner.replay, name), err_msg=name)
            assert streamed.added == runner.replay.added
            with torch.no_grad():  # a new actor, as after updates: the worker must pick it up
                for p in runner.policy.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        assert saw_truncation and list(streamed_episodes["return"]) == list(local_episodes["return"])
        assert (runner.replay.flags & TRUNCATED).any()  # the truncation's final observation row was written
    finally:
        worker.close()
        runner.venv.close()


def test_replay_start_on_some_envs_cuts_only_their_episodes() -> None:
    """A replaced worker's envs restart: their open episodes end truncated, the other envs are untouched."""
    replay = ReplayBuffer(40, 2, 1, (1,), 0.99)
    replay.start(np.zeros((2, 1), np.float32))
    for t in range(3):
        o = np.full((2, 1), t + 1, np.float32)
        replay.add(np.zeros((2, 1), np.float32), np.ones(2, np.float32), np.zeros(2, bool), np.zeros(2, bool), o)
    before = {k: v.copy() for k, v in replay.state_dict().items() if isinstance(v, np.ndarray)}
    replay.start(np.full((1, 1), 99, np.float32), np.array([1]))
    assert replay.flags[2, 1] & TRUNCATED and not replay.flags[2, 0] & TRUNCATED
    assert replay.head.tolist() == [3, 4] and replay.obs[4, 1, 0] == 99 and replay.obs[3, 1, 0] == 3
    for name in ("obs", "flags"):
        np.testing.assert_array_equal(getattr(replay, name)[:, 0], before[name][:, 0])
