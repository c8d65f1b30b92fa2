"""ACKTR: actor-critic using Kronecker-factored trust region (Wu et al. 2017).

An advantage actor-critic whose actor and critic each take one natural-gradient step per rollout,
preconditioned by :class:`~rl_control.optim.kfac.KFAC`:

- Actor: the policy-gradient loss ``-mean(ratio * A)`` (ratio = 1 at the collection parameters, so this is
  the A2C gradient) preconditioned with the K-FAC Fisher of the policy. The Fisher statistics come from a
  *sampled-action* loss ``-sum log pi(a~|s)``, a~ drawn from the current policy (section 3.1), and the
  step is KL-clipped: ``eta = min(eta_max, sqrt(2 delta / Delta^T F Delta))`` (eq. 7 of the paper's
  trust-region formulation), so the quadratic KL estimate stays <= delta.
- Critic: Gauss-Newton, i.e. the Fisher of a Gaussian output ``N(V(s), 1)`` (section 3.2): K-FAC statistics
  from ``sum 0.5 (V - v~)^2`` with sampled targets ``v~ = V + N(0, 1)``. Because this metric is in squared
  value units, we express its trust region relative to the current error variance sigma^2 (the GAE paper's
  constraint ``mean((V - V_old)^2) / (2 sigma^2) <= epsilon``, Schulman et al. 2016 section 5): the KL clip
  is ``vf_kl_clip * sigma^2``. With the plain squared-error gradient, step size 1 is the full
  Gauss-Newton step; measured here, K-FAC underestimates the curvature 2-3x, so that step overshoots and
  ``vf_lr`` defaults to 0.5.

Why two K-FAC instances instead of the paper's joint one: our actor and critic never share parameters (a
separate MLP body each), so the joint Fisher is block-diagonal and the only coupling would be one shared
step-size clip, in which the critic's scale (returns) would throttle the policy step. Separate clips keep
delta a statement about the policy alone.

MLP policies only: K-FAC here covers ``nn.Linear`` layers; an LSTM would get plain gradient steps outside
the trust region, so recurrent policies are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_control import distributions as D
from rl_control import losses
from rl_control.buffers import RolloutBuffer
from rl_control.config import ACKTRConfig
from rl_control.networks import ActorCritic
from rl_control.optim.kfac import KFAC


def sampled_policy_fisher_loss(policy: ActorCritic, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``-sum log pi(a~ | s)`` with ``a~`` sampled from the policy itself (not the rollout's actions).

    Its per-sample gradients are scores of the model's own predictive distribution, whose outer products
    average to the Fisher (the rollout's actions would give the "empirical Fisher" instead).

    Args:
        policy: the actor-critic (its log-std for Gaussian policies).
        out: policy output of the captured forward pass, [..., A] means or [..., K] logits.
        mask: [...] 1 for valid samples.

    Returns:
        Scalar, summed (not averaged) over samples.
    """
    with torch.no_grad():
        if policy.discrete:
            probs = torch.softmax(out, -1).reshape(-1, out.shape[-1])
            sampled = torch.multinomial(probs, 1).reshape(out.shape[:-1])
        else:
            sampled = D.gaussian_sample(out, policy.log_std.expand_as(out))
    log_prob, _ = policy.distribution(out, sampled)
    return -(log_prob * mask).sum()


def sampled_value_fisher_loss(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum 0.5 (V - v~)^2`` with ``v~ = V + N(0, 1)``: the Gauss-Newton statistics of the critic.

    Args:
        values: [...] value predictions of the captured forward pass.
        mask: [...] 1 for valid samples.
    """
    targets = values.detach() + torch.randn_like(values)
    return 0.5 * ((values - targets).pow(2) * mask).sum()


class ACKTR:
    """ACKTR update step; the runner collects rollouts, this class only learns from them."""

    def __init__(self, policy: ActorCritic, cfg: ACKTRConfig, total_iterations: int) -> None:
        if policy.recurrent:
            raise ValueError("ACKTR supports MLP policies only (policy.kind: mlp); use PPO or TRPO for LSTMs")
        if policy.shares_trunk:
            raise ValueError(
                "ACKTR needs separate actor and critic bodies (policy.shared_trunk: false): its two K-FAC "
                "optimizers would both step the shared layers"
            )
        self.policy, self.cfg = policy, cfg
        shared = {"damping": cfg.damping, "stat_decay": cfg.stat_decay, "inverse_every": cfg.inverse_every}
        self.actor_kfac = KFAC(policy, policy.actor_parameters(), cfg.lr, cfg.kl_clip, **shared)
        # The critic's KL clip is rescaled by the value error variance at every update (see module doc).
        self.critic_kfac = KFAC(policy, policy.critic_parameters(), cfg.vf_lr, cfg.vf_kl_clip, **shared)
        self.total_iterations = max(1, total_iterations)
        self.iteration = 0

    def update(self, buffer: RolloutBuffer, rng: np.random.Generator) -> dict[str, float]:
        """One actor and ``vf_steps`` critic K-FAC steps on the whole rollout."""
        cfg, policy = self.cfg, self.policy
        # K-FAC needs the whole batch: its curvature estimate and the KL clip are per-batch statistics.
        mb = next(buffer.minibatches(1, 1, rng))
        adv = mb.advantages
        if cfg.normalize_advantages:
            adv = losses.normalize_advantages(adv, mb.mask)
        old_log_std = policy.log_std.detach().clone() if policy.log_std is not None else None

        with self.actor_kfac.capture(), self.critic_kfac.capture():
            out, values, _ = policy(mb.obs)
        self.actor_kfac.update_factors(sampled_policy_fisher_loss(policy, out, mb.mask))
        self.critic_kfac.update_factors(sampled_value_fisher_loss(values, mb.mask))

        log_prob, entropy = policy.distribution(out, mb.actions)
        ratio = torch.exp(log_prob - mb.log_probs)
        ent = losses.masked_mean(entropy, mb.mask)
        pg_loss = -losses.masked_mean(ratio * adv, mb.mask)
        v_loss = losses.value_loss(values, mb.values, mb.returns, mb.mask)
        sigma2 = 2.0 * v_loss.item() + 1e-8  # mean squared value error before the update
        self.critic_kfac.kl_clip = cfg.vf_kl_clip * sigma2
        self.actor_kfac.zero_grad()
        self.critic_kfac.zero_grad()
        # Actor and critic parameters are disjoint, so one backward pass fills both gradients.
        (pg_loss - cfg.entropy_coef * ent + v_loss).backward()
        actor_stats = self.actor_kfac.step()
        critic_stats = self.critic_kfac.step()
        for _ in range(cfg.vf_steps - 1):
            # Every further critic step re-estimates the curvature at the parameters it starts from: after
            # one step the old factors can underestimate the Gauss-Newton matrix by orders of magnitude.
            with self.critic_kfac.capture():
                _, values, _ = policy(mb.obs)
            self.critic_kfac.update_factors(sampled_value_fisher_loss(values, mb.mask))
            self.critic_kfac.zero_grad()
            losses.value_loss(values, mb.values, mb.returns, mb.mask).backward()
            critic_stats = self.critic_kfac.step()

        with torch.no_grad():
            new_out, new_values, _ = policy(mb.obs)
            kl = losses.masked_mean(policy.kl(mb.old_out, new_out, old_log_std), mb.mask)
            new_v_loss = losses.value_loss(new_values, mb.values, mb.returns, mb.mask)
        stats = {
            "loss/policy": pg_loss.item(), "loss/value": v_loss.item(), "loss/value_after": new_v_loss.item(),
            "entropy": ent.item(), "kl": kl.item(), "value/sigma2": sigma2,
            "actor/step_size": actor_stats["step_size"], "actor/quadratic_kl": actor_stats["quadratic_kl"],
            "critic/step_size": critic_stats["step_size"],
        }
        if policy.log_std is not None:
            stats["action_std"] = float(policy.log_std.detach().exp().mean())
        self.iteration += 1
        return stats

    def state_dict(self) -> dict:
        return {"actor_kfac": self.actor_kfac.state_dict(), "critic_kfac": self.critic_kfac.state_dict(),
                "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.actor_kfac.load_state_dict(state["actor_kfac"])
        self.critic_kfac.load_state_dict(state["critic_kfac"])
        self.iteration = state["iteration"]
