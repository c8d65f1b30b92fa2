"""Generalized advantage estimation (Schulman et al. 2016) as a pure function.

Termination and truncation are separate: a terminated step has no future value; a truncated step
(time limit, unstable physics) bootstraps from the value of its real final observation.
"""

from __future__ import annotations

import numpy as np
import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    last_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets over a rollout.

    Args:
        rewards: r_t, [T, N].
        values: V(s_t), [T, N].
        last_values: V(s_T) of the observation after the last step, [N].
        terminated: episode reached a terminal state at step t, bool [T, N].
        truncated: episode was cut at step t (time limit), bool [T, N].
        final_values: V of the real final observation where ``truncated`` (ignored elsewhere), [T, N].
        gamma: discount.
        lam: GAE lambda.

    Returns:
        (advantages, returns), each [T, N]; returns = advantages + values.
    """
    T = rewards.shape[0]
    term = terminated.to(rewards.dtype)
    done = (terminated | truncated).to(rewards.dtype)
    next_values = torch.cat([values[1:], last_values.unsqueeze(0)], dim=0)
    # After an episode end the next row belongs to a new episode: use the final observation's value.
    next_values = torch.where(truncated, final_values, next_values)
    deltas = rewards + gamma * (1.0 - term) * next_values - values
    decay = gamma * lam * (1.0 - done)
    # The backward recursion runs on numpy views: T tiny steps, where torch's per-op overhead dominates.
    advantages = torch.zeros_like(rewards)
    adv, d, k = advantages.numpy(), deltas.detach().numpy(), decay.detach().numpy()
    running = np.zeros_like(d[0])
    for t in range(T - 1, -1, -1):
        running = d[t] + k[t] * running
        adv[t] = running
    return advantages, advantages + values
