"""The fast paths of collection and update compute the same math as the reference torch code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rl_control.networks as networks
from rl_control.algorithms.ppo import clip_grad_norm
from rl_control.config import PolicyConfig
from rl_control.networks import ActorCritic
from rl_control.rollout_policy import merge_layer_stacks, numpy_rollout_policy


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("normalize_obs", [True, False])
def test_numpy_twin_acts_like_actor_critic(activation, normalize_obs):
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_sizes=(32, 16), activation=activation, normalize_obs=normalize_obs, init_log_std=-0.3)
    policy = ActorCritic(5, 2, cfg)
    for p in policy.parameters():  # move away from the near-zero head initialization
        p.data.add_(0.3 * torch.randn_like(p))
    if normalize_obs:
        policy.normalizer.update(torch.randn(200, 5) * 3 + 1)
    twin = numpy_rollout_policy(policy)
    obs = torch.randn(7, 5) * 2
    expected = policy.act(obs, None, None, torch.Generator().manual_seed(3))
    noise = torch.randn((7, 2), generator=torch.Generator().manual_seed(3))
    action, log_prob, value, mean = twin.act(obs.numpy(), noise.numpy())
    for got, want in zip((action, log_prob, value, mean), expected[:4], strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)
    # Weights are shared: an in-place update is seen without a rebuild.
    with torch.no_grad():
        policy.policy_head.bias.add_(1.0)
    np.testing.assert_allclose(twin.forward(obs.numpy())[0], policy(obs)[0].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_merge_layer_stacks_computes_both_stacks_side_by_side():
    rng = np.random.default_rng(0)

    def stack(sizes):
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append((rng.standard_normal((a, b)).astype(np.float32), rng.standard_normal(b).astype(np.float32)))
            if i < len(sizes) - 2:
                layers.append(np.tanh)
        return layers

    def run(layers, x):
        for layer in layers:
            x = layer(x) if callable(layer) else x @ layer[0] + layer[1]
        return x

    first, second = stack([5, 8, 6, 2]), stack([5, 4, 3, 1])
    x = rng.standard_normal((7, 5)).astype(np.float32)
    merged = merge_layer_stacks(first, second)
    want = np.concatenate([run(first, x), run(second, x)], axis=1)
    np.testing.assert_allclose(run(merged, x), want, rtol=1e-5, atol=1e-5)
    assert merge_layer_stacks(first, stack([5, 8, 2])) is None  # different depth
    assert merge_layer_stacks(first, stack([4, 8, 6, 2])) is None  # different input size
    relu_second = [np.maximum if callable(m) else m for m in second]
    assert merge_layer_stacks(first, relu_second) is None  # different activation


@pytest.mark.parametrize("normalize_obs", [True, False])
def test_snapshot_twin_acts_like_actor_critic_until_weights_change(normalize_obs):
    torch.manual_seed(1)
    cfg = PolicyConfig(hidden_sizes=(32, 16), normalize_obs=normalize_obs, init_log_std=-0.3)
    policy = ActorCritic(5, 2, cfg)
    for p in policy.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    if normalize_obs:
        policy.normalizer.update(torch.randn(200, 5) * 3 + 1)
    twin = numpy_rollout_policy(policy, snapshot=True)
    assert twin.merged is not None
    obs = torch.randn(7, 5) * 2
    expected = policy.act(obs, None, None, torch.Generator().manual_seed(3))
    noise = torch.randn((7, 2), generator=torch.Generator().manual_seed(3))
    got = twin.act(obs.numpy(), noise.numpy())
    for g, want in zip(got, expected[:4], strict=True):
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-5, atol=1e-5)
    # A snapshot holds copies: it follows weight changes only after sync().
    before = twin.forward(obs.numpy())[0].copy()
    with torch.no_grad():
        policy.policy_head.bias.add_(1.0)
        policy.log_std.add_(0.5)
    np.testing.assert_array_equal(twin.forward(obs.numpy())[0], before)
    twin.sync()
    expected = policy.act(obs, None, None, torch.Generator().manual_seed(3))
    for g, want in zip(twin.act(obs.numpy(), noise.numpy()), expected[:4], strict=True):
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-5, atol=1e-5)


def test_numpy_twin_declines_recurrent_and_discrete_policies():
    assert numpy_rollout_policy(ActorCritic(3, 2, PolicyConfig(kind="lstm", lstm_hidden=8))) is None
    assert numpy_rollout_policy(ActorCritic(3, 4, PolicyConfig(), discrete=True)) is None
    assert numpy_rollout_policy(ActorCritic(3, 2, PolicyConfig(activation="elu"))) is None


def test_fast_tanh_matches_torch_tanh_to_second_order(monkeypatch):
    monkeypatch.setattr(networks, "_NUMPY_TANH_MIN", 1)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(networks.fast_tanh(x), torch.tanh(x))
    assert torch.autograd.gradcheck(networks.fast_tanh, (x,))
    assert torch.autograd.gradgradcheck(networks.fast_tanh, (x,))


def test_clip_grad_norm_matches_torch():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for p, q in zip(a, b, strict=True):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    total = clip_grad_norm(a, 0.5)
    want = torch.nn.utils.clip_grad_norm_(b, 0.5)
    torch.testing.assert_close(total, want)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
