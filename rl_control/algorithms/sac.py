"""Soft Actor-Critic for continuous actions (Haarnoja et al. 2018a, 2018b) and discrete actions
(Christodoulou 2019), MLP policies. The LSTM variant lives in ``recurrent_sac.py``.

Continuous: squashed Gaussian actor a = tanh(u), u ~ N(mu(s), sigma(s)) with the tanh change-of-variables
correction in log pi; reparameterized actor gradient; twin critics (clipped double Q, Fujimoto et al.
2018) with the minimum in the target; temperature tuned towards the target entropy -|A|.

Discrete: the critics output Q(s, .) for all K actions and every expectation over actions is taken exactly
with the policy's probabilities (soft value, actor loss, entropy), so no action is sampled in the update;
the target entropy is a fraction of the maximum entropy log K.

Critic targets use n-step returns from the replay buffer, optionally clipped to the return bounds.
"""

from __future__ import annotations

import math

import torch

from rl_control import offpolicy_math as M
from rl_control.algorithms.offpolicy_base import OffPolicyAlgorithm, SpaceSpec, squashed_gaussian_explore
from rl_control.config import PolicyConfig, SACConfig
from rl_control.offpolicy_networks import CriticEnsemble, OffPolicyActor, target_copy
from rl_control.replay import TransitionBatch


class SAC(OffPolicyAlgorithm):
    """SAC update step; the runner collects and samples, this class acts and learns.

    Args:
        spec: observation/action sizes.
        policy_cfg: network sizes and activation (actor and each critic use ``hidden_sizes``).
        cfg: SAC settings.
    """

    def __init__(self, spec: SpaceSpec, policy_cfg: PolicyConfig, cfg: SACConfig) -> None:
        super().__init__(spec)
        if policy_cfg.kind != "mlp":
            raise ValueError("SAC with an LSTM policy is RecurrentSAC (rl_control.algorithms.recurrent_sac)")
        self.cfg, self.discrete = cfg, spec.discrete
        kind = "categorical" if spec.discrete else "squashed_gaussian"
        self.actor = OffPolicyActor(spec.obs_size, spec.action_size, policy_cfg, kind,
                                    spec.action_low, spec.action_high)
        # Continuous critics read (s, a) and output one value; discrete ones read s and output Q(s, .) [K].
        in_size = spec.obs_size if spec.discrete else spec.obs_size + spec.action_size
        out_size = spec.action_size if spec.discrete else 1
        self.critic = CriticEnsemble(in_size, out_size, policy_cfg.hidden_sizes, 2, policy_cfg.activation)
        self.critic_target = target_copy(self.critic)
        if cfg.target_entropy is not None:
            target = cfg.target_entropy
        elif spec.discrete:
            target = cfg.target_entropy_ratio * math.log(spec.action_size)  # Christodoulou 2019, section 4
        else:
            target = -float(spec.action_size)  # Haarnoja et al. 2018b, section 5
        self._init_soft_learning(cfg, target)

    # ---- acting ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def explore(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.discrete and (out := self._numpy_head(obs)) is not None:
            return squashed_gaussian_explore(out, self.spec.action_size, generator), None
        out, _, _ = self.actor.step(obs, None)
        if self.discrete:
            return torch.multinomial(torch.softmax(out, -1), 1, generator=generator).squeeze(-1), None
        mean, log_std = self.actor.split(out)
        noise = torch.randn(mean.shape, generator=generator)
        return M.squashed_gaussian_sample(mean, log_std, noise)[0], None

    # ---- learning ----------------------------------------------------------------------------------------
    def _continuous_losses(self, b: TransitionBatch, x: torch.Tensor, xn: torch.Tensor, alpha: torch.Tensor):
        cfg = self.cfg
        with torch.no_grad():
            mean_n, log_std_n = self.actor.split(self.actor.head(xn)[0])
            a_n, logp_n = M.squashed_gaussian_sample(mean_n, log_std_n, torch.randn_like(mean_n))
            q_n = self.critic_target(torch.cat([xn, a_n], -1)).min(0).values.squeeze(-1)  # [B]
            y = M.soft_q_target(b.rewards, b.discounts, q_n - alpha * logp_n)
            y = M.clip_to_return_bounds(y, cfg.reward_bounds, cfg.gamma)
        mean, log_std = self.actor.split(self.actor.head(x)[0])
        a_pi, logp = M.squashed_gaussian_sample(mean, log_std, torch.randn_like(mean))
        # The actor's Q reads detached critic weights: its loss needs dQ/da only (Haarnoja et al. 2018a, eq. 13).
        q, q_pi = self.critic.train_and_probe(torch.cat([x, b.actions], -1), torch.cat([x, a_pi], -1))
        q, q_pi = q.squeeze(-1), q_pi.min(0).values.squeeze(-1)  # [2, B], [B]
        critic_loss = 0.5 * (q - y).pow(2).mean(-1).sum()
        actor_loss = (alpha * logp - q_pi).mean()
        return critic_loss, actor_loss, logp, q

    def _discrete_losses(self, b: TransitionBatch, x: torch.Tensor, xn: torch.Tensor, alpha: torch.Tensor):
        cfg = self.cfg
        with torch.no_grad():
            q_n = self.critic_target(xn).min(0).values  # [B, K]
            v_n = M.discrete_soft_value(q_n, self.actor.head(xn)[0], alpha)  # exact expectation, [B]
            y = M.clip_to_return_bounds(M.soft_q_target(b.rewards, b.discounts, v_n), cfg.reward_bounds, cfg.gamma)
        q_all = self.critic(x)  # [2, B, K]
        index = b.actions.view(1, -1, 1).expand(q_all.shape[0], -1, 1)
        q = q_all.gather(-1, index).squeeze(-1)  # [2, B]
        critic_loss = 0.5 * (q - y).pow(2).mean(-1).sum()
        log_p = torch.log_softmax(self.actor.head(x)[0], -1)  # [B, K]
        p = log_p.exp()
        # Christodoulou 2019, eq. 12: E_{a~pi}[alpha log pi - Q] computed exactly; Q is a constant here.
        actor_loss = (p * (alpha * log_p - q_all.detach().min(0).values)).sum(-1).mean()
        neg_entropy = (p * log_p).sum(-1).detach()  # E[log pi], the exact expectation the temperature uses
        return critic_loss, actor_loss, neg_entropy, q

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        x, xn = self.actor.normalize(batch.obs), self.actor.normalize(batch.next_obs)
        alpha = self.alpha
        losses = self._discrete_losses if self.discrete else self._continuous_losses
        critic_loss, actor_loss, logp, q = losses(batch, x, xn, alpha)
        self._soft_step(critic_loss + actor_loss, logp)
        return {"loss/critic": critic_loss.item(), "loss/actor": actor_loss.item(), "alpha": alpha.item(),
                "entropy": -logp.mean().item(), "q": q.detach().mean().item()}
