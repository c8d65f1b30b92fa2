"""The one small base class of the off-policy algorithms (SAC, TD3, TQC, recurrent SAC).

It holds what every one of them needs and nothing algorithm-specific: the space description, random
warm-up actions, the mapping of normalized actions to env actions, the entropy temperature (SAC and TQC),
a fused Adam optimizer and checkpoint state. Each algorithm module implements ``explore`` (acting while
collecting) and ``update(batch) -> dict[str, float]`` top to bottom in its own file.

Update scheme: every algorithm computes all of its losses (critic, actor, temperature) from the same
parameters and takes **one** backward pass and **one** fused Adam step per gradient update. The losses
touch disjoint parameters (the actor's loss reads the critic with detached weights, the critic's target
is computed without gradients), so this equals separate optimizers stepping simultaneously, as in the
reference SAC implementation where all updates run in one graph evaluation (Haarnoja et al. 2018). It
saves two backward calls and two optimizer calls per update, which matters on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_control import offpolicy_math as M
from rl_control.offpolicy_networks import LOG_STD_MAX, LOG_STD_MIN, OffPolicyActor
from rl_control.optim import FusedAdam
from rl_control.rollout_policy import mirrorable, normalize_numpy, normalizer_arrays, numpy_layer_stack, run_layer_stack


@dataclass(frozen=True)
class SpaceSpec:
    """Sizes of an env's spaces. ``action_size`` is A (continuous) or K (discrete)."""

    obs_size: int
    action_size: int
    discrete: bool
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @classmethod
    def from_spaces(cls, obs_space: gym.Space, act_space: gym.Space) -> SpaceSpec:
        if len(obs_space.shape or ()) != 1:
            raise ValueError(f"off-policy algorithms need flat observations, got {obs_space}")
        if isinstance(act_space, gym.spaces.Discrete):
            return cls(int(obs_space.shape[0]), int(act_space.n), True)
        if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
            raise ValueError(f"unsupported action space {act_space}")
        return cls(int(obs_space.shape[0]), int(act_space.shape[0]), False,
                   act_space.low.astype(np.float32), act_space.high.astype(np.float32))


class OffPolicyAlgorithm:
    """Base of the off-policy algorithms; subclasses set ``actor`` and call :meth:`_finish_init`."""

    uses_sequences = False
    """True: ``update`` takes :class:`rl_control.replay.SequenceBatch` (recurrent SAC)."""
    actor: OffPolicyActor
    critic: nn.Module
    critic_target: nn.Module

    def __init__(self, spec: SpaceSpec) -> None:
        self.spec = spec
        self.updates = 0
        self.log_alpha: torch.Tensor | None = None
        self.target_entropy = 0.0
        self.auto_alpha = False
        self._twin: list | bool | None = None  # the actor's numpy layer stack, False if it has none; built lazily
        if not spec.discrete:  # OffPolicyActor.scale's constants (its default box is [-1, 1])
            low = np.full(spec.action_size, -1.0) if spec.action_low is None else spec.action_low
            high = np.full(spec.action_size, 1.0) if spec.action_high is None else spec.action_high
            self._action_low = np.asarray(low, np.float32)
            self._action_range = np.asarray(high, np.float32) - self._action_low

    # ---- temperature (SAC, TQC) -----------------------------------------------------------------------
    def _init_temperature(self, init_alpha: float, auto: bool, target_entropy: float) -> None:
        self.log_alpha = torch.tensor(math.log(init_alpha), requires_grad=auto)
        self.auto_alpha, self.target_entropy = auto, float(target_entropy)

    @property
    def alpha(self) -> torch.Tensor:
        """Current temperature as a constant (no gradient flows into alpha from the other losses)."""
        return self.log_alpha.detach().exp()

    # ---- the shared skeleton of the entropy-regularized algorithms (SAC, TQC, recurrent SAC) -------------
    def _init_soft_learning(self, cfg, target_entropy: float) -> None:
        """Temperature, one fused Adam over actor, critic (and log-alpha when tuned), critic-target pairs.

        ``cfg`` has init_alpha, auto_alpha, actor_lr, critic_lr, alpha_lr and tau; ``self.actor``,
        ``self.critic`` and ``self.critic_target`` exist.
        """
        self._init_temperature(cfg.init_alpha, cfg.auto_alpha, target_entropy)
        groups = [(self.actor.parameters(), cfg.actor_lr), (self.critic.parameters(), cfg.critic_lr)]
        if cfg.auto_alpha:
            groups.append(([self.log_alpha], cfg.alpha_lr))
        self.optimizer = self._make_optimizer(groups)
        self._target_params = list(self.critic_target.parameters())
        self._online_params = list(self.critic.parameters())

    def _soft_step(self, loss: torch.Tensor, log_prob: torch.Tensor) -> None:
        """Add the temperature loss (when tuned), take the one backward pass and Adam step, polyak the target."""
        if self.auto_alpha:
            loss = loss + M.temperature_loss(self.log_alpha, log_prob, self.target_entropy)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        M.polyak_update(self._target_params, self._online_params, self.cfg.tau)
        self.updates += 1

    @staticmethod
    def _require_continuous_mlp(name: str, spec: SpaceSpec, kind: str) -> None:
        """TD3 and TQC: continuous actions and an MLP policy, with a message pointing to what does the rest."""
        if spec.discrete:
            raise ValueError(f"{name} needs continuous actions; use SAC for discrete action spaces")
        if kind != "mlp":
            raise ValueError(f"{name} supports MLP policies only; recurrent off-policy learning is SAC with "
                             "policy.kind=lstm")

    # ---- optimizer / checkpoint ---------------------------------------------------------------------------
    def _make_optimizer(self, groups: list[tuple[list[torch.Tensor], float]]) -> FusedAdam:
        """One fused Adam over all parameter groups (params, lr); empty groups are skipped."""
        materialized = [(list(params), lr) for params, lr in groups]  # .parameters() are one-shot iterators
        return FusedAdam([{"params": p, "lr": lr} for p, lr in materialized if p])

    def modules(self) -> dict[str, nn.Module]:
        """Named modules whose state goes into checkpoints (TD3 adds its actor target)."""
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def state_dict(self) -> dict:
        state = {name: m.state_dict() for name, m in self.modules().items()}
        state["optimizer"] = self.optimizer.state_dict()
        state["updates"] = self.updates
        state["log_alpha"] = None if self.log_alpha is None else self.log_alpha.detach().clone()
        return state

    def load_state_dict(self, state: dict) -> None:
        for name, module in self.modules().items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        if self.log_alpha is not None:
            with torch.no_grad():
                self.log_alpha.copy_(state["log_alpha"])

    # ---- acting ------------------------------------------------------------------------------------------
    def random_actions(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """Uniform warm-up actions: normalized [-1, 1]^A [n, A], or indices [n]."""
        if self.spec.discrete:
            return torch.from_numpy(rng.integers(0, self.spec.action_size, n))
        return torch.from_numpy(rng.uniform(-1.0, 1.0, (n, self.spec.action_size)).astype(np.float32))

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        """What the vector env receives: scaled to [low, high] (``OffPolicyActor.scale`` in numpy, the same
        float32 operations in the same order), or integer indices."""
        if self.spec.discrete:
            return actions.numpy().astype(np.int64)
        return self._action_low + (actions.numpy() + 1.0) * 0.5 * self._action_range

    def _numpy_head(self, obs: torch.Tensor) -> np.ndarray | None:
        """The actor's head output [N, .] for raw obs [N, D] through its numpy twin, or None for an actor
        without one (LSTM, activations other than tanh/ReLU).

        Collection runs the actor once per vector step on a few rows, where torch's per-op dispatch costs
        more than the arithmetic (see ``rl_control.rollout_policy``); between two gradient updates that
        code path also runs with cold caches, which measured 2-3x its warm time here. The twin reads the
        live parameters (numpy views; the optimizer and ``load_state_dict`` write in place) and the
        normalizer's statistics at each call (``update`` replaces them).
        """
        if self._twin is None:
            actor = self.actor
            usable = not actor.recurrent and mirrorable(actor.actor_body)
            self._twin = numpy_layer_stack(actor.actor_body, actor.policy_head) if usable else False
        if self._twin is False:
            return None
        return run_layer_stack(self._twin, normalize_numpy(normalizer_arrays(self.actor.normalizer), obs.numpy()))

    def explore(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Actions for collection from raw obs [N, D]: (normalized actions [N, A] or indices [N], new state)."""
        raise NotImplementedError

    def update(self, batch) -> dict[str, float]:
        raise NotImplementedError


def squashed_gaussian_explore(out: np.ndarray, action_size: int, generator: torch.Generator) -> torch.Tensor:
    """tanh(mean + std * noise) from a squashed-Gaussian head output [N, 2A] in numpy: the action of
    ``offpolicy_math.squashed_gaussian_sample`` (same noise draw, same float32 operations), without its
    log-probability, which collection does not use."""
    mean, log_std = out[:, :action_size], np.clip(out[:, action_size:], LOG_STD_MIN, LOG_STD_MAX)
    noise = torch.randn(mean.shape, generator=generator).numpy()
    return torch.from_numpy(np.tanh(mean + noise * np.exp(log_std)))
