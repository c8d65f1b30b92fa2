"""Off-policy math and replay buffer against numbers worked out by hand or by brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rl_control import offpolicy_math as M
from rl_control.config import PolicyConfig
from rl_control.offpolicy_networks import CriticEnsemble, EnsembleLinear, OffPolicyActor, hidden_products
from rl_control.replay import ReplayBuffer, bytes_per_transition


# ---- squashed Gaussian ------------------------------------------------------------------------------------
def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize("a0", [-0.95, -0.3, 0.0, 0.6, 0.99])
def test_squashed_gaussian_log_prob_matches_numerical_change_of_variables(a0):
    # P(a in [a0 - h, a0 + h]) = P(u in [atanh(a0 - h), atanh(a0 + h)]) computed from the Gaussian CDF.
    mu, sigma, h = 0.3, 0.8, 1e-5
    lo, hi = math.atanh(a0 - h), math.atanh(a0 + h)
    numeric = math.log((_normal_cdf((hi - mu) / sigma) - _normal_cdf((lo - mu) / sigma)) / (2 * h))
    u = torch.tensor([[math.atanh(a0)]], dtype=torch.float64)
    ours = M.squashed_gaussian_log_prob(u, torch.tensor([[mu]], dtype=torch.float64),
                                        torch.tensor([[math.log(sigma)]], dtype=torch.float64))
    assert ours.item() == pytest.approx(numeric, abs=1e-5)


def test_squashed_gaussian_log_prob_of_a_vector_uses_the_jacobian_determinant():
    # Diagonal case, A = 3: log N(u) - log |det d tanh(u)/du| with the Jacobian by finite differences.
    torch.manual_seed(0)
    mean, log_std = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64) * 0.3
    u = torch.randn(3, dtype=torch.float64)
    eps = 1e-6
    jac = torch.stack([(torch.tanh(u + eps * e) - torch.tanh(u - eps * e)) / (2 * eps) for e in torch.eye(3)])
    gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum()
    expected = gauss - torch.log(torch.linalg.det(jac).abs())
    assert M.squashed_gaussian_log_prob(u, mean, log_std).item() == pytest.approx(expected.item(), abs=1e-8)


def test_squashed_gaussian_density_integrates_to_one_and_stays_finite_at_saturation():
    a = torch.linspace(-1 + 1e-7, 1 - 1e-7, 400_001, dtype=torch.float64)
    u = torch.atanh(a)
    mean, log_std = torch.tensor(0.5, dtype=torch.float64), torch.tensor(math.log(0.7), dtype=torch.float64)
    density = M.squashed_gaussian_log_prob(u[:, None], mean.view(1, 1), log_std.view(1, 1)).exp()
    assert torch.trapezoid(density, a).item() == pytest.approx(1.0, abs=1e-4)
    # float32, |u| = 15: tanh(u) rounds to 1, the naive log(1 - tanh^2) would be -inf.
    big = M.squashed_gaussian_log_prob(torch.tensor([[15.0]]), torch.tensor([[14.0]]), torch.tensor([[0.0]]))
    assert torch.isfinite(big).all()


def test_squashed_gaussian_sample_is_reparameterized():
    mean = torch.tensor([[0.2, -0.4]], requires_grad=True)
    log_std = torch.tensor([[-1.0, 0.0]], requires_grad=True)
    action, log_prob = M.squashed_gaussian_sample(mean, log_std, torch.tensor([[1.0, -0.5]]))
    assert torch.allclose(action, torch.tanh(torch.tensor([[0.2 + math.exp(-1.0), -0.4 - 0.5]])))
    action.sum().backward()
    assert mean.grad is not None and (mean.grad != 0).all() and (log_std.grad != 0).all()
    assert log_prob.shape == (1,)


# ---- quantile Huber ---------------------------------------------------------------------------------------
def test_quantile_huber_loss_hand_worked_example():
    # Quantiles 0 (tau 0.25) and 1 (tau 0.75) against target atoms 0.5 and 2.0, kappa = 1:
    # u = target - quantile: (0.5, 2.0) for quantile 0 and (-0.5, 1.0) for quantile 1.
    # Huber: 0.125, 1.5, 0.125, 0.5; weights |tau - 1{u<0}|: 0.25, 0.25, 0.25, 0.75.
    # rho: 0.03125, 0.375, 0.03125, 0.375 -> mean 0.203125.
    quantiles = torch.tensor([[0.0, 1.0]])
    targets = torch.tensor([[0.5, 2.0]])
    taus = torch.tensor([0.25, 0.75])
    assert M.quantile_huber_loss(quantiles, targets, taus).item() == pytest.approx(0.203125)
    assert M.quantile_huber_loss_sorted(quantiles, targets, taus).item() == pytest.approx(0.203125)
    # kappa = 2: every |u| <= 2 is quadratic: 0.125, 2.0, 0.125, 0.5 -> weighted 0.03125, 0.5, 0.03125,
    # 0.375; mean 0.234375, divided by kappa -> 0.1171875.
    assert M.quantile_huber_loss(quantiles, targets, taus, kappa=2.0).item() == pytest.approx(0.1171875)


@pytest.mark.parametrize("kappa", [0.5, 1.0, 4.0])
def test_sorted_quantile_huber_equals_pairwise_in_value_and_gradient(kappa):
    torch.manual_seed(1)
    quantiles = (torch.randn(16, 3 * 5) * 4 - 300).requires_grad_()  # large offsets like real returns
    atoms = M.truncated_quantile_targets(torch.randn(3, 16, 7) * 4 - 300, drop_per_net=2)  # sorted, [16, 15]
    atoms[0, 5] = atoms[0, 6]  # a tie
    taus = M.quantile_taus(5).repeat(3)
    ref = M.quantile_huber_loss(quantiles, atoms, taus, kappa)
    (g_ref,) = torch.autograd.grad(ref, quantiles)
    fast = M.quantile_huber_loss_sorted(quantiles, atoms, taus, kappa)
    (g_fast,) = torch.autograd.grad(fast, quantiles)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-9)


def test_truncated_quantile_targets_drop_the_largest_atoms_of_the_pool():
    z = torch.tensor([[[1.0, 5.0, 9.0]], [[2.0, 3.0, 10.0]]])  # E=2 critics, B=1, M=3
    assert M.truncated_quantile_targets(z, drop_per_net=1).tolist() == [[1.0, 2.0, 3.0, 5.0]]
    assert M.quantile_taus(4).tolist() == [0.125, 0.375, 0.625, 0.875]


# ---- temperature, soft values, targets ------------------------------------------------------------------
@pytest.mark.parametrize(("log_prob", "sign"), [(2.0, -1.0), (-3.0, 1.0)])
def test_temperature_loss_gradient_raises_alpha_when_entropy_is_below_target(log_prob, sign):
    # Target entropy -|A| = -1. log pi = 2 means entropy -2 < -1: the gradient must be negative so that
    # gradient descent raises alpha; log pi = -3 (entropy 3 > -1) must lower it.
    log_alpha = torch.tensor(0.0, requires_grad=True)
    loss = M.temperature_loss(log_alpha, torch.full((5,), log_prob), target_entropy=-1.0)
    loss.backward()
    assert math.copysign(1.0, log_alpha.grad.item()) == sign
    assert log_alpha.grad.item() == pytest.approx(-(log_prob - 1.0))


def test_discrete_soft_value_is_the_exact_expectation():
    # pi = (0.25, 0.75), Q = (1, 2), alpha = 0.5:
    # 0.25 (1 - 0.5 ln 0.25) + 0.75 (2 - 0.5 ln 0.75) = 0.4232868 + 1.6078806 = 2.0311674
    q = torch.tensor([[1.0, 2.0]])
    logits = torch.log(torch.tensor([[0.25, 0.75]])) + 3.0  # logits are shift invariant
    assert M.discrete_soft_value(q, logits, 0.5).item() == pytest.approx(2.0311674, abs=1e-6)
    # Brute force: the same as averaging Q - alpha log pi over many sampled actions.
    gen = torch.Generator().manual_seed(0)
    actions = torch.multinomial(torch.tensor([0.25, 0.75]), 200_000, replacement=True, generator=gen)
    log_pi = torch.log(torch.tensor([0.25, 0.75]))[actions]
    assert (q[0, actions] - 0.5 * log_pi).mean().item() == pytest.approx(2.0311674, abs=5e-3)


def test_return_bound_clipping():
    y = torch.tensor([-250.0, -50.0, 3.0])
    # rewards in [-2, 0], gamma 0.99 -> returns in [-200, 0]
    assert M.clip_to_return_bounds(y, (-2.0, 0.0), 0.99).tolist() == pytest.approx([-200.0, -50.0, 0.0])
    assert M.clip_to_return_bounds(y, None, 0.99) is y
    assert M.soft_q_target(torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([4.0])).item() == 3.0


def test_polyak_update():
    target = [torch.tensor([0.0, 10.0]), torch.tensor([[1.0]])]
    source = [torch.tensor([1.0, 20.0]), torch.tensor([[3.0]])]
    M.polyak_update(target, source, tau=0.1)
    assert target[0].tolist() == pytest.approx([0.1, 11.0])
    assert target[1].item() == pytest.approx(1.2)
    assert source[0].tolist() == [1.0, 20.0]
    for _ in range(500):
        M.polyak_update(target, source, tau=0.1)
    assert target[0].tolist() == pytest.approx([1.0, 20.0], rel=1e-5)
    with pytest.raises(ValueError):
        M.polyak_update(target, source[:1], 0.1)


# ---- critic ensemble --------------------------------------------------------------------------------------
def test_critic_ensemble_equals_separate_critics_and_detach_keeps_only_input_gradients():
    torch.manual_seed(0)
    ens = CriticEnsemble(5, 2, (8, 8), ensemble=3, activation="relu")
    x = torch.randn(4, 5)
    out = ens(x)  # [3, 4, 2]
    for e in range(3):
        h = x
        for i, layer in enumerate(ens.layers):
            h = h @ layer.weight[e] + layer.bias[e]
            h = torch.relu(h) if i < len(ens.layers) - 1 else h
        torch.testing.assert_close(out[e], h)
    torch.testing.assert_close(ens(x, members=slice(0, 1))[0], out[0])
    xg = x.clone().requires_grad_()
    ens(xg, detach_params=True).sum().backward()
    assert all(p.grad is None for p in ens.parameters())
    xr = x.clone().requires_grad_()
    ens(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)
    assert EnsembleLinear(2, 3, 4)(torch.randn(2, 5, 3)).shape == (2, 5, 4)


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def _eighths(*shape: int, high: int = 16) -> torch.Tensor:
    """Random multiples of 1/8 in [-high/8, high/8]: exact in bfloat16, and sums of their products stay exact
    in float32, so a result does not depend on the order in which a kernel sums."""
    return torch.randint(-high, high + 1, shape).float() / 8


def _exact_params(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(_eighths(*param.shape))


def test_bfloat16_hidden_products_round_only_the_hidden_to_hidden_layers():
    """Inside hidden_products("bfloat16") a critic equals a hand computation in which only the width->width
    layer's input and output are rounded to bfloat16 (its weights are exact there); first and output layers,
    the output and every gradient stay float32. "float32" (the default) is bit-identical to no block at all.
    Inputs and weights are multiples of 1/8, so float32 sums are exact and the comparison can be exact too."""
    torch.manual_seed(0)
    ens = CriticEnsemble(5, 1, (64, 64), ensemble=2, activation="relu")
    _exact_params(ens)
    x = torch.randint(-4, 5, (16, 5)).float()
    ref = ens(x)
    with hidden_products("float32"):
        assert torch.equal(ens(x), ref)
    with hidden_products("bfloat16"):
        out = ens(x)
        with torch.no_grad():  # a target critic's pass takes a shorter route to the same values
            assert torch.equal(ens(x), out) and torch.equal(ens(x, members=slice(1, 2)), out[1:])
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    first, hidden, last = ens.layers
    assert not first.hidden and hidden.hidden and not last.hidden
    for e in range(2):
        h = torch.relu(x @ first.weight[e] + first.bias[e])
        h = _bf16(_bf16(h) @ hidden.weight[e] + hidden.bias[e])  # bf16 input, exact sum, bf16 output
        torch.testing.assert_close(out[e], torch.relu(h) @ last.weight[e] + last.bias[e], rtol=0, atol=0)
    torch.testing.assert_close(out, ref, rtol=0.03, atol=0.5)  # and near the float32 value
    # The first and output layers take float32 inputs as they are (bfloat16 would be off by ~1e-3 here).
    x_fine, h_fine = torch.randn(16, 5), torch.randn(2, 16, 64)
    with hidden_products("bfloat16"):
        first_out, last_out = first(x_fine), last(h_fine)
    torch.testing.assert_close(first_out, first(x_fine), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(last_out, last(h_fine), rtol=1e-6, atol=1e-5)
    with hidden_products("bfloat16"):
        ens(x).sum().backward()
    assert all(p.grad.dtype == torch.float32 and p.dtype == torch.float32 for p in ens.parameters())
    assert hidden.weight.grad.abs().sum() > 0
    assert ens(x).dtype == torch.float32 and torch.equal(ens(x), ref)  # outside the block: float32 again
    with pytest.raises(ValueError, match="hidden_matmul must be one of"):
        with hidden_products("float16"):
            pass


def _probe_loss(q_train: torch.Tensor, q_probe: torch.Tensor) -> torch.Tensor:
    """A loss of both outputs with uneven weights per row, as SAC's critic and actor losses combine them."""
    w_train = torch.linspace(-1.0, 2.0, q_train.shape[1]).view(1, -1, 1)
    w_probe = torch.linspace(0.5, -3.0, q_probe.shape[1]).view(-1, 1)
    return (q_train * w_train).sum() + (q_probe.min(0).values * w_probe).sum()


def _layer_by_layer(ens: CriticEnsemble, x: torch.Tensor, detach_params: bool = False,
                    members: slice | None = None) -> torch.Tensor:
    """The critic through its EnsembleLinear layers and autograd (the reference for _PairedReluQ)."""
    for i, layer in enumerate(ens.layers):
        x = layer(x, detach_params, members)
        x = torch.relu(x) if i < len(ens.layers) - 1 else x
    return x


@pytest.mark.parametrize("probe_members", [None, slice(0, 1)])
def test_train_and_probe_in_bfloat16_matches_the_two_layer_by_layer_calls(probe_members):
    """One pass over the stacked batch (_PairedReluQ) gives exactly the forward values of critic(x_train) and
    critic(x_probe, detach_params=True) computed layer by layer; the weight gradients come from the training
    rows only and the input gradient from the probe rows, within bfloat16 rounding of the activation
    gradients. A plain critic call inside the block takes the same route (an empty probe)."""
    torch.manual_seed(2)
    ens = CriticEnsemble(5, 1, (64, 64), ensemble=2, activation="relu")
    _exact_params(ens)
    x_train = torch.randint(-4, 5, (16, 5)).float()
    x_probe = torch.randint(-4, 5, (12, 5)).float().requires_grad_()

    def run(paired: bool | None):
        ens.zero_grad(set_to_none=True)
        x_probe.grad = None
        with hidden_products("bfloat16"):
            if paired:
                q_train, q_probe = ens.train_and_probe(x_train, x_probe, probe_members)
            elif paired is None:  # plain calls
                q_train, q_probe = ens(x_train), ens(x_probe, detach_params=True, members=probe_members)
            else:
                q_train = _layer_by_layer(ens, x_train)
                q_probe = _layer_by_layer(ens, x_probe, detach_params=True, members=probe_members)
            _probe_loss(q_train, q_probe).backward()
        return q_train.detach(), q_probe.detach(), x_probe.grad, [p.grad for p in ens.parameters()]

    ref_train, ref_probe, ref_gx, ref_grads = run(paired=False)
    for mode in (True, None):
        q_train, q_probe, gx, grads = run(paired=mode)
        assert q_train.shape == (2, 16, 1) and q_probe.shape == (1 if probe_members else 2, 12, 1)
        assert torch.equal(q_train, ref_train) and torch.equal(q_probe, ref_probe)
        # Sums of many bfloat16-rounded terms that cancel: an error bound relative to the largest entry.
        for g, ref in zip([gx, *grads], [ref_gx, *ref_grads], strict=True):
            assert (g - ref).abs().max() <= 0.01 * ref.abs().max()
    # A loss of the probe alone trains no critic weight.
    ens.zero_grad(set_to_none=True)
    with hidden_products("bfloat16"):
        ens.train_and_probe(x_train, x_probe, probe_members)[1].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in ens.parameters())
    # Outside the block (float32) it is the two calls, bit for bit.
    plain = ens.train_and_probe(x_train, x_probe, probe_members)
    assert torch.equal(plain[0], ens(x_train))
    assert torch.equal(plain[1], ens(x_probe, members=probe_members))


def test_bfloat16_hidden_products_in_the_actor_and_never_outside_the_block():
    torch.manual_seed(1)
    cfg = PolicyConfig(hidden_sizes=(32, 32), activation="relu", normalize_obs=False)
    actor = OffPolicyActor(3, 2, cfg, "squashed_gaussian")
    _exact_params(actor)
    x = torch.randint(-4, 5, (8, 3)).float()
    ref = actor.head(x)[0]
    with hidden_products("bfloat16"):
        out = actor.head(x)[0]
    body = actor.actor_body
    h = torch.relu(body[0](x))
    h = torch.relu(_bf16(_bf16(h) @ body[2].weight.T + body[2].bias))
    torch.testing.assert_close(out, actor.policy_head(h), rtol=0, atol=0)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    assert torch.equal(actor.head(x)[0], ref)  # acting, evaluation and export run in float32


# ---- replay buffer ----------------------------------------------------------------------------------------
def test_replay_bytes_per_transition_and_halfcheetah_million_fits_well_under_a_gib():
    assert bytes_per_transition(17, 6) == 4 * (17 + 6 + 1) + 1 == 97
    buf = ReplayBuffer(1_000_000, 1, 17, (6,), gamma=0.99)  # np.zeros: pages are touched only when written
    assert buf.nbytes == 1_000_000 * 97
    assert buf.nbytes < 2**30 / 10


def _filled_buffer(n_step: int) -> tuple[ReplayBuffer, dict[int, float]]:
    """One env, gamma 0.5; observation k is [k]. Episode A: 3 steps ending terminated; B: 2 steps ending
    truncated (real final observation [100]); C: one step so far (head holds observation [7])."""
    buf = ReplayBuffer(64, 1, 1, (1,), gamma=0.5, n_step=n_step)
    buf.start(np.array([[0.0]], np.float32))
    steps = [  # reward, terminated, truncated, next obs returned by the env, final obs
        (1.0, False, False, 1.0, 0.0),
        (2.0, False, False, 2.0, 0.0),
        (4.0, True, False, 3.0, 0.0),  # terminal; env auto-resets to [3]
        (8.0, False, False, 4.0, 0.0),
        (16.0, False, True, 5.0, 100.0),  # time limit; final obs [100], env resets to [5]
        (32.0, False, False, 7.0, 0.0),
    ]
    for r, term, trunc, nxt, final in steps:
        buf.add(np.array([[0.5]], np.float32), np.array([r], np.float32), np.array([term]), np.array([trunc]),
                np.array([[nxt]], np.float32), np.array([[final]], np.float32))
    rows = {int(buf.obs[i, 0, 0]): i for i in range(buf.filled[0]) if buf.flags[i, 0] & 1}
    return buf, rows


def test_nstep_returns_across_episode_ends_by_hand():
    buf, rows = _filled_buffer(n_step=3)
    # obs -> (n-step return, discount, bootstrap observation) worked out by hand, gamma 0.5, n 3:
    expected = {
        0: (1 + 0.5 * 2 + 0.25 * 4, 0.0, None),  # reaches the terminal step: no bootstrap
        1: (2 + 0.5 * 4, 0.0, None),
        2: (4.0, 0.0, None),
        3: (8 + 0.5 * 16, 0.25, 100.0),  # truncated after 2 steps: bootstrap from the real final obs
        4: (16.0, 0.5, 100.0),
        5: (32.0, 0.5, 7.0),  # cut at the head: bootstrap from the newest observation
    }
    assert sorted(rows) == sorted(expected)
    idx = np.array([rows[k] for k in sorted(expected)])
    ret, disc, boot = buf.nstep_indices(idx, np.zeros_like(idx))
    for j, k in enumerate(sorted(expected)):
        r, d, b = expected[k]
        assert ret[j] == pytest.approx(r) and disc[j] == pytest.approx(d), k
        if b is not None:
            assert buf.obs[boot[j], 0, 0] == b, k
    one, _ = _filled_buffer(n_step=1)
    ret1, disc1, boot1 = one.nstep_indices(idx, np.zeros_like(idx))
    assert ret1.tolist() == [1, 2, 4, 8, 16, 32] and disc1.tolist() == [0.5, 0.5, 0.0, 0.5, 0.5, 0.5]
    assert [one.obs[b, 0, 0] for b in boot1] == [1, 2, 3, 4, 100, 7]
    assert len(buf) == 6


def test_replay_sampling_matches_a_brute_force_reference_after_wrapping():
    # Two envs with random episode ends fill a small ring several times; every sampled transition's
    # n-step return must equal a loop over the logged trajectory (cut at episode ends and the newest step).
    rng = np.random.default_rng(0)
    gamma, n = 0.9, 4
    buf = ReplayBuffer(2 * 40, 2, 2, (1,), gamma=gamma, n_step=n)
    log: list[list[tuple[float, bool, bool, float]]] = [[], []]  # per env: reward, term, trunc, next id
    counter = [0.0, 1000.0]
    obs = np.array([[0, counter[0]], [1, counter[1]]], np.float32)
    buf.start(obs)
    for _ in range(300):
        r = rng.normal(size=2).astype(np.float32)
        term, trunc = rng.random(2) < 0.08, rng.random(2) < 0.08
        nxt, final = obs.copy(), obs.copy()
        for i in range(2):
            counter[i] += 1
            final[i, 1] = counter[i]  # the real last observation of the episode (when it ends)
            if term[i] or trunc[i]:
                counter[i] += 1
            nxt[i, 1] = counter[i]
            log[i].append((float(r[i]), bool(term[i]), bool(trunc[i] and not term[i]), float(obs[i, 1])))
        buf.add(rng.uniform(-1, 1, (2, 1)).astype(np.float32), r, term, trunc, nxt, final)
        obs = nxt
    by_id = [{step[3]: j for j, step in enumerate(log[i])} for i in range(2)]
    batch = buf.sample(512, np.random.default_rng(1))
    for k in range(512):
        env, oid = int(batch.obs[k, 0]), float(batch.obs[k, 1])
        j = by_id[env][oid]
        ret, disc, m = 0.0, 1.0, 0
        for step in log[env][j : j + n]:
            ret += disc * step[0]
            disc *= gamma
            m += 1
            if step[1]:
                disc = 0.0
            if step[1] or step[2]:
                break
        assert batch.rewards[k].item() == pytest.approx(ret, abs=1e-5)
        assert batch.discounts[k].item() == pytest.approx(disc, abs=1e-6)
        if disc > 0:  # bootstrap observation = the observation m steps later (or the real final one)
            assert batch.next_obs[k, 1].item() == oid + m
        assert len(log[env]) - j <= 40  # only transitions still in the ring are sampled


def test_sequences_stop_at_episode_ends_and_start_at_episode_starts():
    buf, rows = _filled_buffer(n_step=1)
    seq = buf.sample_sequences(64, length=4, burn_in=2, rng=np.random.default_rng(0))
    for s in range(64):
        first = seq.obs[0, s, 0].item()
        mask = seq.mask[:, s].tolist()
        # Episode A = obs 0, 1, 2 (terminated), B = 3, 4 (truncated), C = 5 (head after it).
        episode = {0: [0, 1, 2], 1: [1, 2], 2: [2], 3: [3, 4], 4: [4], 5: [5]}[int(first)]
        assert mask == [1.0] * len(episode) + [0.0] * (4 - len(episode))
        # Starts within burn_in steps after an episode start were moved back to it.
        assert first in (0.0, 3.0, 5.0)
        assert bool(seq.first_is_start[s]) is True
        if first == 3.0:
            assert seq.obs[2, s, 0].item() == 100.0  # the real final observation follows transition 4
            assert seq.discounts[:2, s].tolist() == [0.5, 0.5]
        if first == 0.0:
            assert seq.discounts[2, s].item() == 0.0
