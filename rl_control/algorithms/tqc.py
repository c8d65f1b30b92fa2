"""Truncated Quantile Critics (Kuznetsov et al. 2020), MLP policies, continuous actions.

N critics each predict M quantiles of the return distribution Z(s, a). The target pools the N x M atoms
of the target critics at (s', a' ~ pi), sorts them and drops the k largest per critic (k N in total),
which controls over-estimation more finely than a min over critics. Critics regress on the truncated
atoms with the quantile Huber loss; the actor maximizes the mean over all atoms minus the entropy term,
with SAC's squashed Gaussian and automatic temperature.
"""

from __future__ import annotations

import torch

from rl_control import offpolicy_math as M
from rl_control.algorithms.offpolicy_base import OffPolicyAlgorithm, SpaceSpec, squashed_gaussian_explore
from rl_control.config import PolicyConfig, TQCConfig
from rl_control.offpolicy_networks import CriticEnsemble, OffPolicyActor, target_copy
from rl_control.replay import TransitionBatch


class TQC(OffPolicyAlgorithm):
    """TQC update step.

    Args:
        spec: observation/action sizes (continuous actions only).
        policy_cfg: network sizes and activation (actor and each critic use ``hidden_sizes``).
        cfg: TQC settings.
    """

    def __init__(self, spec: SpaceSpec, policy_cfg: PolicyConfig, cfg: TQCConfig) -> None:
        super().__init__(spec)
        self._require_continuous_mlp("TQC", spec, policy_cfg.kind)
        if cfg.top_quantiles_to_drop >= cfg.n_quantiles:
            raise ValueError(f"top_quantiles_to_drop={cfg.top_quantiles_to_drop} leaves no atoms of "
                             f"n_quantiles={cfg.n_quantiles}")
        self.cfg = cfg
        self.actor = OffPolicyActor(spec.obs_size, spec.action_size, policy_cfg, "squashed_gaussian",
                                    spec.action_low, spec.action_high)
        # All N critics in one batched pass: [N, B, M] per forward.
        self.critic = CriticEnsemble(spec.obs_size + spec.action_size, cfg.n_quantiles, policy_cfg.hidden_sizes,
                                     cfg.n_critics, policy_cfg.activation)
        self.critic_target = target_copy(self.critic)
        target = cfg.target_entropy if cfg.target_entropy is not None else -float(spec.action_size)
        self._init_soft_learning(cfg, target)
        self.taus = M.quantile_taus(cfg.n_quantiles).repeat(cfg.n_critics)  # [N * M], critic-major

    @torch.no_grad()
    def explore(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if (out := self._numpy_head(obs)) is not None:
            return squashed_gaussian_explore(out, self.spec.action_size, generator), None
        out, _, _ = self.actor.step(obs, None)
        mean, log_std = self.actor.split(out)
        return M.squashed_gaussian_sample(mean, log_std, torch.randn(mean.shape, generator=generator))[0], None

    def update(self, batch: TransitionBatch) -> dict[str, float]:
        cfg = self.cfg
        x, xn = self.actor.normalize(batch.obs), self.actor.normalize(batch.next_obs)
        alpha = self.alpha
        B = x.shape[0]
        with torch.no_grad():
            mean_n, log_std_n = self.actor.split(self.actor.head(xn)[0])
            a_n, logp_n = M.squashed_gaussian_sample(mean_n, log_std_n, torch.randn_like(mean_n))
            z_n = self.critic_target(torch.cat([xn, a_n], -1))  # [N, B, M]
            atoms = M.truncated_quantile_targets(z_n, cfg.top_quantiles_to_drop)  # [B, N (M - k)]
            y = M.soft_q_target(batch.rewards[:, None], batch.discounts[:, None], atoms - alpha * logp_n[:, None])
            y = M.clip_to_return_bounds(y, cfg.reward_bounds, cfg.gamma)
        z = self.critic(torch.cat([x, batch.actions], -1))  # [N, B, M]
        z_pooled = z.permute(1, 0, 2).reshape(B, -1)  # [B, N * M], critic-major like self.taus
        # The atoms are sorted (and stay so under y = r + d (atoms - alpha log pi) and clipping, as d >= 0), so
        # the O(B N log T) form of the quantile Huber loss applies; it equals the pairwise one exactly.
        critic_loss = M.quantile_huber_loss_sorted(z_pooled, y, self.taus, cfg.huber_kappa)
        mean, log_std = self.actor.split(self.actor.head(x)[0])
        a_pi, logp = M.squashed_gaussian_sample(mean, log_std, torch.randn_like(mean))
        # Kuznetsov et al. 2020, eq. 12: the actor maximizes the mean of all (untruncated) atoms.
        q_pi = self.critic(torch.cat([x, a_pi], -1), detach_params=True).mean(dim=(0, 2))  # [B]
        actor_loss = (alpha * logp - q_pi).mean()
        self._soft_step(critic_loss + actor_loss, logp)
        return {"loss/critic": critic_loss.item(), "loss/actor": actor_loss.item(), "alpha": alpha.item(),
                "entropy": -logp.mean().item(), "q": z.detach().mean().item()}
