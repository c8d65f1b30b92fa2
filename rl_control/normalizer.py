"""Running mean/variance normalizer that lives inside the policy, so export carries it."""

from __future__ import annotations

import torch
from torch import nn


def merge_moments(
    mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor,
    batch_mean: torch.Tensor, batch_var: torch.Tensor, batch_count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine running moments with a batch's (Chan et al. parallel variance). All [D] except counts."""
    total = count + batch_count
    delta = batch_mean - mean
    new_mean = mean + delta * (batch_count / total)
    m2 = var * count + batch_var * batch_count + delta.pow(2) * count * batch_count / total
    return new_mean, m2 / total, total


class RunningNormalizer(nn.Module):
    """y = clip((x - mean) / sqrt(var + eps), -clip, clip); statistics updated only by ``update``."""

    def __init__(self, size: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        self.mean, self.var, self.count = merge_moments(
            self.mean, self.var, self.count, x.mean(0), x.var(0, unbiased=False), x.shape[0]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(x.dtype)
        std = torch.sqrt(self.var + self.eps).to(x.dtype)
        return torch.clamp((x - mean) / std, -self.clip, self.clip)


class RewardScaler:
    """Divides rewards by the running standard deviation of the discounted return (per-env returns,
    reset at episode ends), the "reward scaling" of Engstrom et al. 2020. Keeps value targets near
    unit scale whatever the task's reward magnitude."""

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8) -> None:
        self.gamma, self.eps = gamma, eps
        self.returns = torch.zeros(num_envs, dtype=torch.float64)
        self.mean = torch.zeros(1, dtype=torch.float64)
        self.var = torch.ones(1, dtype=torch.float64)
        self.count = torch.tensor(1e-4, dtype=torch.float64)

    def __call__(self, rewards: torch.Tensor, dones: torch.Tensor) -> torch.Tensor:
        """Scale one step's rewards [N]; ``dones`` [N] ends the running returns after this step."""
        self.returns = self.returns * self.gamma + rewards.to(torch.float64)
        r = self.returns.unsqueeze(-1)
        self.mean, self.var, self.count = merge_moments(
            self.mean, self.var, self.count, r.mean(0), r.var(0, unbiased=False), r.shape[0]
        )
        self.returns = self.returns * (~dones).to(torch.float64)
        return (rewards / torch.sqrt(self.var + self.eps)).to(rewards.dtype)

    def state_dict(self) -> dict:
        return {"returns": self.returns, "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.returns, self.mean, self.var, self.count = (state[k] for k in ("returns", "mean", "var", "count"))
