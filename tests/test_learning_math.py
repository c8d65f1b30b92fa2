"""Shared learning math against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_control import distributions as D
from rl_control import losses
from rl_control.advantages import gae
from rl_control.buffers import RolloutBuffer
from rl_control.config import PolicyConfig
from rl_control.networks import ActorCritic
from rl_control.normalizer import RunningNormalizer, merge_moments


def test_gae_hand_computed_with_terminated_and_truncated_episodes():
    # env 0 runs on; env 1 terminates at t=0 and is truncated at t=1 (final observation worth 3.0).
    rewards = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    values = torch.tensor([[0.5, 0.2], [1.0, 0.4], [1.5, 0.6]])
    last_values = torch.tensor([2.0, 5.0])
    terminated = torch.tensor([[False, True], [False, False], [False, False]])
    truncated = torch.tensor([[False, False], [False, True], [False, False]])
    final_values = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
    adv, ret = gae(rewards, values, last_values, terminated, truncated, final_values, gamma=0.9, lam=0.8)
    # env 0: deltas 1.4, 2.35, 3.3; adv_t = delta_t + 0.72 adv_{t+1}
    # env 1: t0 terminated -> 1 - 0.2 = 0.8; t1 truncated -> 1 + 0.9*3 - 0.4 = 3.3; t2 -> 1 + 4.5 - 0.6 = 4.9
    expected = torch.tensor([[4.80272, 0.8], [4.726, 3.3], [3.3, 4.9]])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ret, expected + values, atol=1e-5, rtol=0)


def test_ppo_clip_loss_hand_made_batch():
    ratio = torch.tensor([0.5, 1.0, 1.5, 0.5])
    adv = torch.tensor([1.0, -1.0, 2.0, -1.0])
    # min(r A, clip(r) A): 0.5, -1.0, min(3.0, 2.4) = 2.4, min(-0.5, -0.8) = -0.8
    loss = losses.ppo_clip_loss(ratio, adv, clip=0.2, mask=torch.ones(4))
    assert loss.item() == pytest.approx(-(0.5 - 1.0 + 2.4 - 0.8) / 4)
    # padding is ignored
    masked = losses.ppo_clip_loss(ratio, adv, clip=0.2, mask=torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert masked.item() == pytest.approx(-(0.5 - 1.0 + 2.4) / 3)


def test_adaptive_kl_beta_rule():
    assert losses.adaptive_kl_beta(1.0, kl=0.005, kl_target=0.01) == 0.5  # below d/1.5: halve
    assert losses.adaptive_kl_beta(1.0, kl=0.02, kl_target=0.01) == 2.0  # above 1.5 d: double
    assert losses.adaptive_kl_beta(1.0, kl=0.01, kl_target=0.01) == 1.0
    assert losses.adaptive_kl_beta(1.0, kl=0.01 / 1.5, kl_target=0.01) == 1.0  # boundary stays


def test_kl_penalty_and_value_loss_hand_computed():
    ratio, adv, kl = torch.tensor([1.2, 0.9]), torch.tensor([1.0, -2.0]), torch.tensor([0.1, 0.3])
    # -(mean(r A) - beta mean(KL)) = -((1.2 - 1.8)/2 - 2 * 0.2) = 0.7
    assert losses.kl_penalty_loss(ratio, adv, kl, beta=2.0, mask=torch.ones(2)).item() == pytest.approx(0.7)
    v, old_v, ret = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.9]), torch.tensor([2.0, 2.0])
    assert losses.value_loss(v, old_v, ret, torch.ones(2)).item() == pytest.approx(0.5 * (1 + 1) / 2)
    # clipped: v0 -> 0.0 + 0.2 = 0.2, error 3.24 > 1; v1 moved only 0.1, stays 3.0, error 1
    assert losses.value_loss(v, old_v, ret, torch.ones(2), clip=0.2).item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)


def test_gaussian_functions_match_closed_forms():
    torch.manual_seed(0)
    mean, log_std, action = torch.randn(5, 3), torch.randn(3) * 0.3, torch.randn(5, 3)
    ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(D.gaussian_log_prob(mean, log_std.expand(5, 3), action), ref.log_prob(action).sum(-1))
    torch.testing.assert_close(D.gaussian_entropy(log_std), ref.entropy()[0].sum())
    mean2, log_std2 = torch.randn(5, 3), torch.randn(3) * 0.3
    ref2 = torch.distributions.Normal(mean2, log_std2.exp())
    torch.testing.assert_close(
        D.gaussian_kl(mean, log_std.expand(5, 3), mean2, log_std2.expand(5, 3)),
        torch.distributions.kl_divergence(ref, ref2).sum(-1),
    )
    # one dimension by hand: KL(N(0,1) || N(1, 2^2)) = log 2 + (1 + 1)/8 - 1/2
    kl = D.gaussian_kl(torch.zeros(1), torch.zeros(1), torch.ones(1), torch.tensor([np.log(2.0)]))
    assert kl.item() == pytest.approx(np.log(2.0) + 2 / 8 - 0.5)


def test_categorical_functions_hand_computed():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    assert D.categorical_log_prob(logits, torch.tensor([1])).item() == pytest.approx(np.log(0.25))
    assert D.categorical_entropy(logits).item() == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    q = torch.log(torch.tensor([[1 / 3, 1 / 3, 1 / 3]]))
    expected = 0.5 * np.log(1.5) + 0.5 * np.log(0.75)
    assert D.categorical_kl(logits, q).item() == pytest.approx(expected)


def test_running_normalizer_matches_batch_statistics():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (7, 100, 13)]
    norm = RunningNormalizer(4)
    for c in chunks:
        norm.update(torch.from_numpy(c))
    data = np.concatenate(chunks)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), atol=1e-4)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-4)
    # merging two sets by hand: {0, 2} and {4}: mean 2, var 8/3
    m, v, n = merge_moments(torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor(2.0), torch.tensor([4.0]),
                            torch.tensor([0.0]), 1)
    assert (m.item(), v.item(), n.item()) == pytest.approx((2.0, 8 / 3, 3.0))


def test_lstm_sequence_training_equals_step_by_step_rollout_with_resets():
    torch.manual_seed(0)
    T, N, obs_size = 40, 3, 5
    cfg = PolicyConfig(kind="lstm", lstm_hidden=16, hidden_sizes=(8,))
    policy = ActorCritic(obs_size, 2, cfg)
    policy.normalizer.update(torch.randn(100, obs_size) * 2 + 1)
    buffer = RolloutBuffer(T, N, obs_size, (2,), 2, policy.state_shape_per_env)
    obs = torch.randn(T, N, obs_size)
    starts = torch.rand(T, N) < 0.1
    starts[0] = True
    state = policy.initial_state(N)
    with torch.no_grad():
        for t in range(T):
            state = state * (~starts[t]).float().view(1, 1, -1, 1)
            buffer.states[t] = state
            out, value, state = policy.step(obs[t], state)
            buffer.obs[t], buffer.out[t], buffer.values[t], buffer.starts[t] = obs[t], out, value, starts[t]
    for mb in buffer.minibatches(num_minibatches=3, bptt_len=7, rng=np.random.default_rng(1)):
        with torch.no_grad():
            out, value, _ = policy(mb.obs, mb.state)
        valid = mb.mask.bool()
        torch.testing.assert_close(out[valid], mb.old_out[valid], atol=1e-5, rtol=0)
        torch.testing.assert_close(value[valid], mb.values[valid], atol=1e-5, rtol=0)
        assert int(mb.mask.sum()) > 0
    t0, n0, length = buffer.segments(7)
    assert length.sum() == T * N and length.max() <= 7
    # every episode start begins a segment
    assert set(zip(*np.nonzero(starts.numpy().T), strict=True)) <= set(zip(n0, t0, strict=True))
