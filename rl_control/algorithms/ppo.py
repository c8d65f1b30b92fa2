"""Proximal Policy Optimization (Schulman et al. 2017), clipped or adaptive-KL-penalty surrogate.

Works with MLP and LSTM policies: the rollout buffer hands out padded sequences with masks for
recurrent policies, so one update code path serves both.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_control import losses
from rl_control.buffers import Minibatch, RolloutBuffer
from rl_control.config import PPOConfig
from rl_control.networks import ActorCritic
from rl_control.optim import FusedAdam
from rl_control.ppo_numpy_grad import numpy_ppo_gradient

STAT_NAMES = ("loss/policy", "loss/value", "entropy", "kl", "clip_fraction")
_KL = STAT_NAMES.index("kl")


@torch.no_grad()
def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm`` (as torch's clip_grad_norm_,
    without its per-call device/dtype grouping, which costs more than the arithmetic at this size)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


class PPO:
    """PPO update step. The runner collects rollouts; this class only learns from them."""

    def __init__(self, policy: ActorCritic, cfg: PPOConfig, total_iterations: int) -> None:
        self.policy, self.cfg = policy, cfg
        # One fused kernel per step for all parameters, without torch.optim.Adam's per-step bookkeeping.
        self.optimizer = FusedAdam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        # Feed-forward Gaussian policies with the clipped surrogate: loss and gradients in numpy (same math,
        # a fraction of autograd's per-op cost at these sizes); everything else goes through autograd.
        self.numpy_gradient = numpy_ppo_gradient(policy, cfg)
        self.total_iterations = max(1, total_iterations)
        self.iteration = 0
        self.beta = cfg.kl_beta_init

    def _learning_rate(self) -> float:
        if self.cfg.lr_schedule == "linear":
            return self.cfg.lr * max(0.0, 1.0 - self.iteration / self.total_iterations)
        return self.cfg.lr

    def _minibatch_loss(
        self, mb: Minibatch, old_log_std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, detached stats [len(STAT_NAMES)]); stats stay tensors so there is no .item() per minibatch."""
        cfg, policy = self.cfg, self.policy
        mask = None if mb.state is None else mb.mask  # feed-forward minibatches are never padded
        out, values, _ = policy(mb.obs, mb.state)
        log_prob, entropy = policy.distribution(out, mb.actions)
        ratio = torch.exp(log_prob - mb.log_probs)
        adv = losses.normalize_advantages(mb.advantages, mask) if cfg.normalize_advantages else mb.advantages
        if cfg.surrogate == "clip":
            pg_loss = losses.ppo_clip_loss(ratio, adv, cfg.clip_range, mask)
            with torch.no_grad():  # only a statistic here: keep it out of the autograd graph
                kl = policy.kl(mb.old_out, out.detach(), old_log_std)
        else:
            kl = policy.kl(mb.old_out, out, old_log_std)
            pg_loss = losses.kl_penalty_loss(ratio, adv, kl, self.beta, mask)
        v_loss = losses.value_loss(values, mb.values, mb.returns, mask, cfg.clip_value)
        ent = losses.masked_mean(entropy, mask)
        loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * ent
        with torch.no_grad():
            clip_frac = losses.masked_mean(((ratio - 1.0).abs() > cfg.clip_range).float(), mask)
            stats = torch.stack([pg_loss, v_loss, ent, losses.masked_mean(kl, mask), clip_frac])
        return loss, stats

    @torch.no_grad()
    def _rollout_kl(self, buffer: RolloutBuffer, old_log_std: torch.Tensor | None) -> float:
        """Mean KL(collecting policy || current policy) over every valid sample of the rollout."""
        # One minibatch holds the whole rollout; its order is irrelevant, so a fixed generator keeps the
        # training RNG stream untouched.
        mb = next(buffer.minibatches(1, self.cfg.bptt_len, np.random.default_rng(0)))
        out, _, _ = self.policy(mb.obs, mb.state)
        kl = self.policy.kl(mb.old_out, out, old_log_std)
        return float(losses.masked_mean(kl, None if mb.state is None else mb.mask))

    def update(self, buffer: RolloutBuffer, rng: np.random.Generator) -> dict[str, float]:
        cfg, policy = self.cfg, self.policy
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        old_log_std = policy.log_std.detach().clone() if policy.log_std is not None else None
        old_log_std_np = None if old_log_std is None else old_log_std.numpy()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        totals = torch.zeros(len(STAT_NAMES))
        count, stopped_early = 0, False
        for _ in range(cfg.epochs):
            epoch_totals, epoch_n = torch.zeros(len(STAT_NAMES)), 0
            for mb in buffer.minibatches(cfg.minibatches, cfg.bptt_len, rng):
                if self.numpy_gradient is not None:  # sets clipped param.grad itself
                    stats = torch.from_numpy(self.numpy_gradient(mb, old_log_std_np))
                else:
                    loss, stats = self._minibatch_loss(mb, old_log_std)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    clip_grad_norm(params, cfg.max_grad_norm)
                self.optimizer.step()
                epoch_totals += stats
                epoch_n += 1
            totals += epoch_totals
            count += epoch_n
            if cfg.kl_early_stop is not None and epoch_totals[_KL].item() / epoch_n > cfg.kl_early_stop:
                stopped_early = True
                break
        result = dict(zip(STAT_NAMES, (totals / count).tolist(), strict=True))
        if cfg.surrogate == "kl_penalty":
            # Schulman et al. 2017, section 4: d is the KL of the policy after the epochs, not the average
            # over minibatches seen while it moved (which understates it and halves beta too often).
            result["kl_final"] = self._rollout_kl(buffer, old_log_std)
            self.beta = losses.adaptive_kl_beta(self.beta, result["kl_final"], cfg.kl_target)
            result["kl_beta"] = self.beta
        result["lr"] = self._learning_rate()
        result["early_stop"] = float(stopped_early)
        if policy.log_std is not None:
            result["action_std"] = float(policy.log_std.detach().exp().mean())
        self.iteration += 1
        return result

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "iteration": self.iteration, "beta": self.beta}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration, self.beta = state["iteration"], state["beta"]
