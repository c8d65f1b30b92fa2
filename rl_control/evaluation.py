"""Deterministic evaluation of a policy, torch or ONNX, on one env, episode after episode.

Episode k is seeded with ``seed + k``, so two policies evaluated with the same seed face the same
initial states and the same randomized dynamics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch

from rl_control.networks import ActorCritic
from sim.randomization import RandomizationConfig
from sim.tasks import make_env


class StepPolicy(Protocol):
    def reset(self) -> None: ...
    def act(self, obs: np.ndarray) -> np.ndarray: ...


class TorchPolicy:
    """Deterministic torch actor with a carried recurrent state, batch of one."""

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self.state = self.policy.initial_state(1)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        out, _, self.state = self.policy.step(torch.as_tensor(obs, dtype=torch.float32)[None], self.state)
        return self.policy.deterministic_action(out)[0].numpy()


@dataclass(frozen=True)
class EvalResult:
    mean_return: float
    std_return: float
    success_rate: float
    mean_length: float
    returns: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def evaluate(
    policy: StepPolicy,
    task_id: str,
    episodes: int,
    seed: int,
    randomization: RandomizationConfig | None = None,
) -> EvalResult:
    env = make_env(task_id, randomization)
    returns, lengths, successes = [], [], []
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            policy.reset()
            total, steps, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy.act(obs))
                total += float(reward)
                steps += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(steps)
            successes.append(float(info.get("is_success", np.nan)))
    finally:
        env.close()
    success = np.array(successes)
    return EvalResult(
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        success_rate=float(np.nanmean(success)) if np.any(np.isfinite(success)) else float("nan"),
        mean_length=float(np.mean(lengths)),
        returns=tuple(returns),
    )
