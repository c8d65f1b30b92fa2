"""Policy-gradient losses as pure functions. Every input is [...] (any batch shape) with a matching
``mask`` of 1 for valid entries and 0 for padding (recurrent minibatches are padded sequences);
``mask=None`` means every entry is valid (saves the masking ops on unpadded minibatches)."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_advantages(adv: torch.Tensor, mask: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    if mask is None:
        var, mean = torch.var_mean(adv, correction=0)  # one pass instead of mean, then squared deviations
    else:
        mean = masked_mean(adv, mask)
        var = masked_mean((adv - mean).pow(2), mask)
    return (adv - mean) / torch.sqrt(var + eps)


def ppo_clip_loss(ratio: torch.Tensor, adv: torch.Tensor, clip: float, mask: torch.Tensor | None) -> torch.Tensor:
    """Clipped surrogate of Schulman et al. 2017 (eq. 7), negated for minimization."""
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv)
    return -masked_mean(surrogate, mask)


def kl_penalty_loss(
    ratio: torch.Tensor, adv: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Adaptive-KL-penalty surrogate of Schulman et al. 2017 (eq. 8): -(r A - beta KL)."""
    return -masked_mean(ratio * adv - beta * kl, mask)


def adaptive_kl_beta(beta: float, kl: float, kl_target: float) -> float:
    """Schulman et al. 2017, section 4: halve beta if KL < d/1.5, double it if KL > 1.5 d."""
    if kl < kl_target / 1.5:
        return beta / 2.0
    if kl > kl_target * 1.5:
        return beta * 2.0
    return beta


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    clip: float | None = None,
) -> torch.Tensor:
    """0.5 (V - R)^2, optionally the pessimistic clipped variant (max of clipped and unclipped)."""
    err = (values - returns).pow(2)
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err = torch.maximum(err, (clipped - returns).pow(2))
    return 0.5 * masked_mean(err, mask)
