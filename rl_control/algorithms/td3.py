"""Twin Delayed DDPG (Fujimoto et al. 2018), MLP policies, continuous actions.

The three fixes of the paper over DDPG, each marked below: clipped double-Q learning (min of twin target
critics), target policy smoothing (clipped Gaussian noise on the target action), and delayed policy
updates (actor and target networks updated every ``policy_delay`` critic updates).
"""

from __future__ import annotations

import numpy as np
import torch

from rl_control import offpolicy_math as M
from rl_control.algorithms.offpolicy_base import OffPolicyAlgorithm, SpaceSpec
from rl_control.config import PolicyConfig, TD3Config
from rl_control.offpolicy_networks import CriticEnsemble, OffPolicyActor, target_copy
from rl_control.replay import TransitionBatch


class TD3(OffPolicyAlgorithm):
    """TD3 update step.

    Args:
        spec: observation/action sizes (continuous actions only).
        policy_cfg: network sizes and activation (actor and each critic use ``hidden_sizes``).
        cfg: TD3 settings.
    """

    def __init__(self, spec: SpaceSpec, policy_cfg: PolicyConfig, cfg: TD3Config) -> None:
        super().__init__(spec)
        self._require_continuous_mlp("TD3", spec, policy_cfg.kind)
        self.cfg = cfg
        self.actor = OffPolicyActor(spec.obs_size, spec.action_size, policy_cfg, "deterministic",
                                    spec.action_low, spec.action_high)
        self.actor_target = target_copy(self.actor)
        self.critic = CriticEnsemble(spec.obs_size + spec.action_size, 1, policy_cfg.hidden_sizes, 2,
                                     policy_cfg.activation)
        self.critic_target = target_copy(self.critic)
        self.optimizer = self._make_optimizer([(self.actor.parameters(), cfg.actor_lr),
                                               (self.critic.parameters(), cfg.critic_lr)])
        self._target_params = list(self.critic_target.parameters()) + list(self.actor_target.parameters())
        self._online_params = list(self.critic.parameters()) + list(self.actor.parameters())

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                "critic_target": self.critic_target}

    @torch.no_grad()
    def explore(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if (out := self._numpy_head(obs)) is not None:  # the same float32 operations in numpy
            noise = torch.randn(out.shape, generator=generator).numpy() * self.cfg.exploration_noise
            return torch.from_numpy(np.clip(np.tanh(out) + noise, -1.0, 1.0)), None
        out, _, _ = self.actor.step(obs, None)
        action = self.actor.unit_action(out)
        noise = torch.randn(action.shape, generator=generator) * self.cfg.exploration_noise
        return (action + noise).clamp(-1.0, 1.0), None

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        cfg = self.cfg
        x, xn = self.actor.normalize(batch.obs), self.actor.normalize(batch.next_obs)
        with torch.no_grad():
            a_n = self.actor_target.unit_action(self.actor_target.head(xn)[0])
            # Target policy smoothing (section 5.3): clipped noise makes the target a local average of Q.
            noise = (torch.randn_like(a_n) * cfg.target_noise).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
            a_n = (a_n + noise).clamp(-1.0, 1.0)
            # Clipped double Q (section 4.2): the smaller twin estimate counters over-estimation.
            q_n = self.critic_target(torch.cat([xn, a_n], -1)).min(0).values.squeeze(-1)
            y = M.clip_to_return_bounds(M.soft_q_target(batch.rewards, batch.discounts, q_n), cfg.reward_bounds,
                                        cfg.gamma)
        self.updates += 1
        # Delayed policy updates (section 5.2): the actor follows a critic that had time to settle.
        delayed = self.updates % cfg.policy_delay == 0
        x_q = torch.cat([x, batch.actions], -1)
        if delayed:
            a_pi = self.actor.unit_action(self.actor.head(x)[0])
            # Deterministic policy gradient through the first critic only (as in the paper), weights detached.
            q, q_pi = self.critic.train_and_probe(x_q, torch.cat([x, a_pi], -1), probe_members=slice(0, 1))
        else:
            q = self.critic(x_q)
        q = q.squeeze(-1)  # [2, B]
        critic_loss = (q - y).pow(2).mean(-1).sum()
        loss = critic_loss
        stats = {"loss/critic": critic_loss.item(), "q": q.detach().mean().item()}
        if delayed:
            actor_loss = -q_pi.mean()
            loss = loss + actor_loss
            stats["loss/actor"] = actor_loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()  # actor parameters have no gradient on non-delayed updates: Adam skips them
        if delayed:
            M.polyak_update(self._target_params, self._online_params, cfg.tau)
        return stats
