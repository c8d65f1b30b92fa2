"""The fast paths of collection and update compute the same math as the reference torch code."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import rl_control.networks as networks
from rl_control import offpolicy_math as M
from rl_control.algorithms import make_offpolicy_algorithm
from rl_control.algorithms.offpolicy_base import SpaceSpec
from rl_control.algorithms.ppo import PPO, clip_grad_norm
from rl_control.buffers import Minibatch
from rl_control.config import PolicyConfig, PPOConfig, SACConfig, TD3Config, TQCConfig
from rl_control.networks import ActorCritic
from rl_control.optim import FusedAdam
from rl_control.ppo_numpy_grad import numpy_ppo_gradient
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


def test_fused_adam_steps_like_torch_adam_and_shares_its_state_layout():
    """FusedAdam equals torch.optim.Adam(fused=True) bit for bit, with two parameter groups, a parameter
    left without gradient, an lr change mid-way, and a checkpoint loaded across the two classes."""
    torch.manual_seed(0)
    shapes = [(6, 4), (6,), (3, 6), (3,)]
    start = [torch.randn(s) for s in shapes]

    def make(cls, **kw):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        groups = [{"params": params[:2], "lr": 3e-3}, {"params": params[2:], "lr": 1e-3}]
        return params, cls(groups, betas=(0.8, 0.99), eps=1e-5, **kw)

    def run(params, opt, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for t in range(steps):
            for i, p in enumerate(params):
                # parameter 3 has no gradient on odd steps: its moments and step count must not move
                p.grad = None if (i == 3 and t % 2) else torch.randn(p.shape, generator=gen)
            if t == 3:
                opt.param_groups[0]["lr"] = 5e-4
            opt.step()

    ours, ours_opt = make(FusedAdam)
    ref, ref_opt = make(torch.optim.Adam, fused=True)
    run(ours, ours_opt, 7, seed=1)
    run(ref, ref_opt, 7, seed=1)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    assert ref_opt.state[ref[3]]["step"].item() == 4.0  # steps 0, 2, 4, 6
    for a, b in zip(ours, ref, strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ours_opt.state[a][key], ref_opt.state[b][key])
            assert ours_opt.state[a][key].dtype == ref_opt.state[b][key].dtype
    # A checkpoint of either class resumes in the other with identical results.
    # (deep copies: load_state_dict may keep the very tensors it is given, which the two would then share)
    ours_state, ref_state = copy.deepcopy(ours_opt.state_dict()), copy.deepcopy(ref_opt.state_dict())
    ours_opt.load_state_dict(ref_state)
    ref_opt.load_state_dict(ours_state)
    run(ours, ours_opt, 3, seed=2)
    run(ref, ref_opt, 3, seed=2)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def _ppo_minibatch(policy: ActorCritic, batch: int, seed: int) -> Minibatch:
    """A minibatch whose ratios fall inside and outside the clip range and whose values move both ways."""
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, policy.obs_size, generator=gen) * 2
    with torch.no_grad():
        mean, values, _ = policy(obs)
        actions = mean + torch.randn(mean.shape, generator=gen) * policy.log_std.exp()
        log_probs, _ = policy.distribution(mean, actions)
    return Minibatch(
        obs=obs,
        actions=actions,
        log_probs=log_probs + 0.4 * torch.randn(batch, generator=gen),
        values=values + 0.3 * torch.randn(batch, generator=gen),
        advantages=torch.randn(batch, generator=gen) * 3 + 0.5,
        returns=values + torch.randn(batch, generator=gen),
        old_out=mean + 0.1 * torch.randn(mean.shape, generator=gen),
        mask=None,
        state=None,
    )


@pytest.mark.parametrize(
    ("activation", "normalize_obs", "clip_value", "entropy_coef", "normalize_adv"),
    [("tanh", False, None, 0.0, True), ("tanh", True, 0.2, 0.01, True), ("relu", False, 0.3, 0.0, False)],
)
def test_numpy_ppo_gradient_equals_autograd(activation, normalize_obs, clip_value, entropy_coef, normalize_adv):
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_sizes=(32, 16), activation=activation, normalize_obs=normalize_obs, init_log_std=-0.3)
    policy = ActorCritic(5, 2, cfg)
    for p in policy.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    if normalize_obs:
        policy.normalizer.update(torch.randn(200, 5) * 3 + 1)
    algo_cfg = PPOConfig(
        clip_value=clip_value, entropy_coef=entropy_coef, value_coef=0.7, normalize_advantages=normalize_adv,
        max_grad_norm=1e9,  # no clipping here: compare the raw gradients
    )
    algo = PPO(policy, algo_cfg, total_iterations=1)
    assert algo.numpy_gradient is not None
    mb = _ppo_minibatch(policy, 96, seed=1)
    old_log_std = policy.log_std.detach() - 0.05

    loss, ref_stats = algo._minibatch_loss(mb, old_log_std)
    policy.zero_grad(set_to_none=True)
    loss.backward()
    ref_grads = [p.grad.clone() for p in policy.parameters()]
    assert 0.1 < ref_stats[4] < 0.9  # the clip fraction: both branches of the surrogate are exercised

    stats = algo.numpy_gradient(mb, old_log_std.numpy())
    np.testing.assert_allclose(stats, ref_stats.numpy(), rtol=1e-5, atol=1e-6)
    for (name, p), ref in zip(policy.named_parameters(), ref_grads, strict=True):
        np.testing.assert_allclose(p.grad.numpy(), ref.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_numpy_ppo_gradient_clips_to_the_global_norm_like_clip_grad_norm():
    torch.manual_seed(1)
    policy = ActorCritic(3, 1, PolicyConfig(hidden_sizes=(8, 8)))
    algo = PPO(policy, PPOConfig(max_grad_norm=0.05), total_iterations=1)
    mb = _ppo_minibatch(policy, 40, seed=2)
    old_log_std = policy.log_std.detach().clone()
    loss, _ = algo._minibatch_loss(mb, old_log_std)
    loss.backward()
    clip_grad_norm(list(policy.parameters()), 0.05)
    ref = [p.grad.clone() for p in policy.parameters()]
    algo.numpy_gradient(mb, old_log_std.numpy())
    grads = [p.grad for p in policy.parameters()]
    assert float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))) == pytest.approx(0.05, rel=1e-4)
    for g, r in zip(grads, ref, strict=True):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-7)


def test_numpy_ppo_gradient_declines_what_it_does_not_cover():
    mlp = ActorCritic(3, 2, PolicyConfig(hidden_sizes=(8,)))
    assert numpy_ppo_gradient(mlp, PPOConfig()) is not None
    assert numpy_ppo_gradient(mlp, PPOConfig(surrogate="kl_penalty")) is None
    assert numpy_ppo_gradient(ActorCritic(3, 2, PolicyConfig(hidden_sizes=(8,), activation="elu")), PPOConfig()) is None
    assert numpy_ppo_gradient(ActorCritic(3, 2, PolicyConfig(kind="lstm", lstm_hidden=8)), PPOConfig()) is None
    assert numpy_ppo_gradient(ActorCritic(3, 4, PolicyConfig(), discrete=True), PPOConfig()) is None
    shared = ActorCritic(3, 2, PolicyConfig(hidden_sizes=(8,), shared_trunk=True))
    assert numpy_ppo_gradient(shared, PPOConfig()) is None


def test_shared_mlp_trunk_feeds_both_heads_and_both_losses_train_it():
    torch.manual_seed(0)
    cfg = PolicyConfig(hidden_sizes=(8, 8), normalize_obs=False)
    shared = ActorCritic(4, 2, cfg.model_copy(update={"shared_trunk": True}))
    separate = ActorCritic(4, 2, cfg)
    assert shared.critic_body is shared.actor_body and shared.shares_trunk and not separate.shares_trunk
    body_size = sum(p.numel() for p in separate.critic_body.parameters())
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in separate.parameters()) - body_size
    obs = torch.randn(5, 4)
    out, value, _ = shared(obs)
    features = shared.actor_body(obs)
    torch.testing.assert_close(out, shared.policy_head(features))
    torch.testing.assert_close(value, shared.value_head(features).squeeze(-1))
    value.sum().backward()  # a value loss alone reaches the shared layers
    assert shared.actor_body[0].weight.grad.abs().sum() > 0
    # The rollout twin computes the same actions and values from the shared body.
    twin = numpy_rollout_policy(shared)
    expected = shared.act(obs, None, None, torch.Generator().manual_seed(3))
    noise = torch.randn((5, 2), generator=torch.Generator().manual_seed(3))
    for got, want in zip(twin.act(obs.numpy(), noise.numpy()), expected[:4], strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)


def _torch_explore(algo, obs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The reference: exploration actions computed by the actor's torch forward pass."""
    out, _, _ = algo.actor.step(obs, None)
    noise = torch.randn((obs.shape[0], algo.spec.action_size), generator=generator)
    if algo.actor.kind == "deterministic":
        return (algo.actor.unit_action(out) + noise * algo.cfg.exploration_noise).clamp(-1.0, 1.0)
    mean, log_std = algo.actor.split(out)
    return M.squashed_gaussian_sample(mean, log_std, noise)[0]


@pytest.mark.parametrize("name", ["sac", "td3", "tqc"])
@pytest.mark.parametrize("normalize_obs", [True, False])
def test_offpolicy_exploration_twin_acts_like_the_torch_actor(name, normalize_obs):
    torch.manual_seed(0)
    spec = SpaceSpec(5, 3, False, np.array([-2.0, 0.0, -1.0], np.float32), np.array([2.0, 1.0, 3.0], np.float32))
    policy_cfg = PolicyConfig(hidden_sizes=(32, 16), activation="relu", normalize_obs=normalize_obs)
    algo = make_offpolicy_algorithm(spec, policy_cfg, {"sac": SACConfig, "td3": TD3Config, "tqc": TQCConfig}[name]())
    for p in algo.actor.parameters():  # away from the small initialization, so that tanh saturates somewhere
        p.data.add_(0.5 * torch.randn_like(p))
    obs = torch.randn(6, 5) * 3
    assert algo._numpy_head(obs) is not None  # this is the numpy path
    for _ in range(2):
        if normalize_obs:  # new statistics each round: the twin must read them at every call
            algo.actor.normalizer.update(torch.randn(50, 5) * 2 + 1)
        got = algo.explore(obs, None, None, torch.Generator().manual_seed(4))[0]
        want = _torch_explore(algo, obs, torch.Generator().manual_seed(4))
        assert got.dtype == torch.float32 and got.shape == (6, 3)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert got.abs().max() > 0.9  # some actions near the bounds: the squash is exercised
        np.testing.assert_array_equal(algo.env_actions(got), algo.actor.scale(got).numpy())
        # The twin shares the parameters: an in-place load (checkpoint, Ray broadcast) is seen.
        state = {k: v + 0.1 for k, v in algo.actor.state_dict().items()}
        algo.actor.load_state_dict(state)


def test_offpolicy_exploration_without_a_twin_uses_torch():
    spec = SpaceSpec(4, 2, False, -np.ones(2, np.float32), np.ones(2, np.float32))
    elu = make_offpolicy_algorithm(spec, PolicyConfig(hidden_sizes=(8,), activation="elu"), SACConfig())
    lstm = make_offpolicy_algorithm(spec, PolicyConfig(kind="lstm", lstm_hidden=8, hidden_sizes=(8,)), SACConfig())
    discrete = make_offpolicy_algorithm(SpaceSpec(4, 3, True), PolicyConfig(hidden_sizes=(8,)), SACConfig())
    obs = torch.randn(2, 4)
    assert elu._numpy_head(obs) is None and lstm._numpy_head(obs) is None
    torch.testing.assert_close(elu.explore(obs, None, None, torch.Generator().manual_seed(1))[0],
                               _torch_explore(elu, obs, torch.Generator().manual_seed(1)))
    actions, state = lstm.explore(obs, lstm.actor.initial_state(2), None, torch.Generator().manual_seed(1))
    assert actions.shape == (2, 2) and state.shape == (1, 2, 2, 8)
    assert discrete.explore(obs, None, None, torch.Generator())[0].dtype == torch.int64
