"""Action distributions as pure functions.

Shapes: ``mean``/``log_std``/``action`` are [..., A]; results are [...] (summed over the action axis).
Discrete policies use ``logits`` [..., K] and integer actions [...].
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log N(action; mean, exp(log_std)^2), diagonal, summed over the last axis.

    ``log_std`` may be [A] (state-independent): its terms are then summed once, not once per sample.
    """
    z = (action - mean) * torch.exp(-log_std)
    return -0.5 * z.pow(2).sum(-1) - (log_std.sum(-1) + 0.5 * _LOG_2PI * mean.shape[-1])


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """Entropy of a diagonal Gaussian, summed over the last axis: sum(log_std + 0.5 log(2 pi e))."""
    return (log_std + 0.5 * (_LOG_2PI + 1.0)).sum(-1)


def gaussian_kl(
    mean_p: torch.Tensor, log_std_p: torch.Tensor, mean_q: torch.Tensor, log_std_q: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) of two diagonal Gaussians, summed over the last axis."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


def gaussian_sample(
    mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return mean + noise * torch.exp(log_std)


def categorical_log_prob(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, -1)
    return log_p.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    log_p, log_q = torch.log_softmax(logits_p, -1), torch.log_softmax(logits_q, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
