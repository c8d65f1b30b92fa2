"""Off-policy learning math as pure functions: squashed Gaussian, soft values, temperature loss,
quantile Huber loss, return-bound clipping and the polyak target update.

Shapes use B for the batch, A for the action size, K for the number of discrete actions, E for the
ensemble size (critics), M for quantiles per critic. Actions of continuous policies live in the
normalized box [-1, 1]^A here; the actor maps them to the env's range (see
:class:`rl_control.offpolicy_networks.OffPolicyActor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rl_control.distributions import gaussian_log_prob

_LOG_2 = math.log(2.0)


def tanh_log_det_jacobian(u: torch.Tensor) -> torch.Tensor:
    """sum_i log(1 - tanh(u_i)^2) over the last axis, computed stably.

    Uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), which stays finite where tanh(u)
    rounds to +-1 in float32 (|u| > ~9), unlike log(1 - tanh(u)^2 + eps).

    Args:
        u: pre-squash Gaussian sample, [..., A].

    Returns:
        [...]
    """
    return (2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log-density of a = tanh(u), u ~ N(mean, exp(log_std)^2), evaluated at the pre-image u.

    Change of variables (Haarnoja et al. 2018, "Soft Actor-Critic", appendix C, eq. 21):
    log pi(a) = log N(u) - sum_i log(1 - tanh(u_i)^2).

    Args:
        u, mean, log_std: [..., A].

    Returns:
        log pi(tanh(u)), [...].
    """
    return gaussian_log_prob(mean, log_std, u) - tanh_log_det_jacobian(u)


def squashed_gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterized sample a = tanh(mean + std * noise) and its log-prob.

    The reparameterization (Haarnoja et al. 2018, eq. 11) lets the actor loss differentiate through
    the sample; ``noise`` ~ N(0, I) is passed in so callers control the random stream.

    Args:
        mean, log_std, noise: [..., A].

    Returns:
        (action in (-1, 1) [..., A], log-prob [...]).
    """
    u = mean + noise * log_std.exp()
    return torch.tanh(u), squashed_gaussian_log_prob(u, mean, log_std)


def soft_q_target(
    rewards: torch.Tensor, discounts: torch.Tensor, next_values: torch.Tensor
) -> torch.Tensor:
    """y = r + discount * V(s'), where ``discounts`` already holds gamma^n (0 after a termination).

    Args:
        rewards: (n-step discounted) rewards, [B] (or [B, 1] to broadcast over quantiles).
        discounts: gamma^n, or 0 where the episode terminated within the n steps, same shape as rewards.
        next_values: soft value of the bootstrap observation, [B] or [B, T].
    """
    return rewards + discounts * next_values


def discrete_soft_value(q: torch.Tensor, logits: torch.Tensor, alpha: torch.Tensor | float) -> torch.Tensor:
    """Exact soft state value V(s) = sum_a pi(a|s) (Q(s, a) - alpha log pi(a|s)).

    Discrete SAC (Christodoulou 2019, eq. 10) takes this expectation exactly over the K actions
    instead of sampling one action, which removes the sampling variance of the target.

    Args:
        q: Q-values, [B, K].
        logits: policy logits, [B, K].
        alpha: temperature (scalar).

    Returns:
        [B]
    """
    log_p = torch.log_softmax(logits, -1)
    return (log_p.exp() * (q - alpha * log_p)).sum(-1)


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Loss of the automatic temperature (Haarnoja et al. 2018b, "SAC algorithms and applications", eq. 18).

    J(alpha) = E[-alpha (log pi(a|s) + target_entropy)]. Like most implementations we write it with
    log alpha in place of alpha, so its gradient is simply -E[log pi + target_entropy] and Adam's steps
    are relative changes of alpha. When the policy's entropy -log pi is below the target, the gradient is
    negative and gradient descent raises alpha (more exploration); above the target it lowers alpha.

    Args:
        log_alpha: scalar parameter.
        log_prob: log pi(a|s) of fresh policy samples, [B] (detached here). For discrete SAC pass
            -entropy, the exact expectation of log pi over the actions.
        target_entropy: H_bar; -|A| for continuous actions (Haarnoja et al. 2018b).
    """
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def quantile_huber_loss(
    quantiles: torch.Tensor, targets: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """Quantile regression Huber loss (Dabney et al. 2018, eq. 10; used by TQC, Kuznetsov et al. 2020, eq. 9).

    rho_tau(u) = |tau - 1{u < 0}| * Huber_kappa(u) / kappa with u = target - quantile, averaged over the
    batch, the predicted quantiles and the target atoms.

    Args:
        quantiles: predicted quantiles theta, [B, N] (N = critics x quantiles per critic, pooled).
        targets: target atoms, [B, T]; no gradient flows into them.
        taus: quantile fraction of each predicted quantile, [N] (e.g. (2m + 1) / (2M), repeated per critic).
        kappa: Huber threshold.

    Returns:
        scalar loss.
    """
    u = targets.detach().unsqueeze(-2) - quantiles.unsqueeze(-1)  # [B, N, T]
    abs_u = u.abs()
    huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa))  # [B, N, T]
    weight = (taus.unsqueeze(-1) - (u.detach() < 0).to(u.dtype)).abs()  # [B, N, T] via [N, 1] broadcast
    return (weight * huber).mean() / kappa


class _SortedQuantileHuber(torch.autograd.Function):
    """Exact quantile Huber loss against sorted targets in O(B N log T) with prefix sums (see below)."""

    @staticmethod
    def forward(ctx, quantiles: torch.Tensor, targets: torch.Tensor, taus: torch.Tensor, kappa: float):
        B, N = quantiles.shape
        T = targets.shape[-1]
        y = targets.detach().to(torch.float64)  # [B, T] ascending
        theta = quantiles.detach().to(torch.float64)  # [B, N]
        tau = taus.to(torch.float64).expand(B, N)
        zero = torch.zeros(B, 1, dtype=torch.float64)
        p1 = torch.cat([zero, y.cumsum(-1)], -1)  # prefix sums of y, [B, T + 1]
        p2 = torch.cat([zero, (y * y).cumsum(-1)], -1)  # prefix sums of y^2
        # Split the targets of each quantile at theta - kappa, theta, theta + kappa:
        # set 1: u < -kappa, set 2: -kappa <= u < 0, set 3: 0 <= u <= kappa, set 4: u > kappa (u = y - theta).
        i0 = torch.zeros_like(theta, dtype=torch.long)
        i1 = torch.searchsorted(y, theta - kappa)
        i2 = torch.searchsorted(y, theta)
        i3 = torch.searchsorted(y, theta + kappa, right=True)
        i4 = torch.full_like(i0, T)

        def sums(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            c = (hi - lo).to(torch.float64)
            s1 = p1.gather(-1, hi) - p1.gather(-1, lo)
            s2 = p2.gather(-1, hi) - p2.gather(-1, lo)
            return c, s1 - theta * c, s2 - 2 * theta * s1 + theta * theta * c  # count, sum u, sum u^2

        c1, u1, _ = sums(i0, i1)
        c2, u2, q2 = sums(i1, i2)
        c3, u3, q3 = sums(i2, i3)
        c4, u4, _ = sums(i3, i4)
        k = float(kappa)
        loss = (1 - tau) * (-k * u1 - 0.5 * k * k * c1 + 0.5 * q2) + tau * (0.5 * q3 + k * u4 - 0.5 * k * k * c4)
        scale = 1.0 / (B * N * T * k)
        grad = (1 - tau) * (k * c1 - u2) + tau * (-u3 - k * c4)  # d loss(b, n) / d theta(b, n)
        ctx.save_for_backward((grad * scale).to(quantiles.dtype))
        return (loss.sum() * scale).to(quantiles.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None, None


def quantile_huber_loss_sorted(
    quantiles: torch.Tensor, sorted_targets: torch.Tensor, taus: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """:func:`quantile_huber_loss` (same value and gradient) for targets sorted along the last axis.

    The pairwise form builds a [B, N, T] tensor (B=256, N=125, T=115 in TQC's defaults: 3.7M elements per
    elementwise op, most of TQC's update time). With the targets sorted, the sum over targets of each
    quantile splits at theta - kappa, theta and theta + kappa into four ranges where the loss is a
    polynomial in theta; prefix sums of y and y^2 (float64, so the expansion of (y - theta)^2 does not
    cancel catastrophically) give each range's sum, located by binary search: O(B N log T).

    Args:
        quantiles: [B, N] predictions (gradient flows into them only).
        sorted_targets: [B, T], ascending in the last axis (e.g. from :func:`truncated_quantile_targets`).
        taus: [N] quantile fractions.
        kappa: Huber threshold.

    Returns:
        scalar loss.
    """
    return _SortedQuantileHuber.apply(quantiles, sorted_targets.contiguous(), taus, kappa)


def quantile_taus(num_quantiles: int, device: torch.device | None = None) -> torch.Tensor:
    """Midpoint quantile fractions tau_m = (2m + 1) / (2M), m = 0..M-1 (Dabney et al. 2018), [M]."""
    return (torch.arange(num_quantiles, device=device, dtype=torch.float32) + 0.5) / num_quantiles


def truncated_quantile_targets(next_quantiles: torch.Tensor, drop_per_net: int) -> torch.Tensor:
    """Pool the target critics' quantiles, sort, and drop the top ``drop_per_net * E`` atoms.

    TQC (Kuznetsov et al. 2020, section 3) controls over-estimation by discarding the largest atoms of
    the pooled mixture.

    Args:
        next_quantiles: [E, B, M] quantiles of the E target critics.
        drop_per_net: k, atoms dropped per critic.

    Returns:
        [B, E * (M - k)] the smallest atoms, ascending.
    """
    E, B, M = next_quantiles.shape
    pooled = next_quantiles.permute(1, 0, 2).reshape(B, E * M)
    keep = E * (M - drop_per_net)
    return torch.sort(pooled, dim=-1).values[:, :keep]


def clip_to_return_bounds(
    targets: torch.Tensor, reward_bounds: tuple[float, float] | None, gamma: float
) -> torch.Tensor:
    """Clip critic targets to [r_min / (1 - gamma), r_max / (1 - gamma)] when reward bounds are known.

    No discounted return can leave this interval, so clipping removes over-estimated bootstrap values
    before they propagate (the classic remedy before TD3's clipped double-Q). ``None`` disables it.
    A soft-value target also contains the entropy bonus, so the bounds hold for the reward part only;
    callers use this on tasks whose entropy term is small relative to the reward range.
    """
    if reward_bounds is None:
        return targets
    r_min, r_max = reward_bounds
    if gamma >= 1.0:
        return targets
    return targets.clamp(r_min / (1.0 - gamma), r_max / (1.0 - gamma))


@torch.no_grad()
def polyak_update(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], tau: float) -> None:
    """target <- (1 - tau) target + tau source, for every pair, in place (Lillicrap et al. 2016).

    The only state touched is the target tensors. One fused ``_foreach_lerp_`` call instead of a
    Python loop over parameters: the update runs once per gradient step, so its overhead counts.
    """
    if len(targets) != len(sources):
        raise ValueError(f"polyak_update: {len(targets)} targets but {len(sources)} sources")
    if targets:
        torch._foreach_lerp_(list(targets), list(sources), tau)
