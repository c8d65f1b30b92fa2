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


class PPO:
    """PPO update step. The runner collects rollouts; this class only learns from them."""

    def __init__(self, policy: ActorCritic, cfg: PPOConfig, total_iterations: int) -> None:
        self.policy, self.cfg = policy, cfg
        # fused: one kernel per step for all parameters; measurably faster than the per-tensor loop on CPU.
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
        self.total_iterations = max(1, total_iterations)
        self.iteration = 0
        self.beta = cfg.kl_beta_init

    def _learning_rate(self) -> float:
        if self.cfg.lr_schedule == "linear":
            return self.cfg.lr * max(0.0, 1.0 - self.iteration / self.total_iterations)
        return self.cfg.lr

    def _minibatch_loss(self, mb: Minibatch, old_log_std: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        cfg, policy = self.cfg, self.policy
        out, values, _ = policy(mb.obs, mb.state)
        log_prob, entropy = policy.distribution(out, mb.actions)
        ratio = torch.exp(log_prob - mb.log_probs)
        adv = losses.normalize_advantages(mb.advantages, mb.mask) if cfg.normalize_advantages else mb.advantages
        kl = policy.kl(mb.old_out, out, old_log_std)
        if cfg.surrogate == "clip":
            pg_loss = losses.ppo_clip_loss(ratio, adv, cfg.clip_range, mb.mask)
        else:
            pg_loss = losses.kl_penalty_loss(ratio, adv, kl, self.beta, mb.mask)
        v_loss = losses.value_loss(values, mb.values, mb.returns, mb.mask, cfg.clip_value)
        ent = losses.masked_mean(entropy, mb.mask)
        loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * ent
        with torch.no_grad():
            clip_frac = losses.masked_mean(((ratio - 1.0).abs() > cfg.clip_range).float(), mb.mask)
        stats = {"loss/policy": pg_loss.item(), "loss/value": v_loss.item(), "entropy": ent.item(),
                 "kl": losses.masked_mean(kl, mb.mask).item(), "clip_fraction": clip_frac.item()}
        return loss, stats

    def update(self, buffer: RolloutBuffer, rng: np.random.Generator) -> dict[str, float]:
        cfg, policy = self.cfg, self.policy
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        old_log_std = policy.log_std.detach().clone() if policy.log_std is not None else None
        totals: dict[str, float] = {}
        count, stopped_early = 0, False
        for _ in range(cfg.epochs):
            epoch_kl, epoch_n = 0.0, 0
            for mb in buffer.minibatches(cfg.minibatches, cfg.bptt_len, rng):
                loss, stats = self._minibatch_loss(mb, old_log_std)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
                count += 1
                epoch_kl += stats["kl"]
                epoch_n += 1
            if cfg.kl_early_stop is not None and epoch_kl / epoch_n > cfg.kl_early_stop:
                stopped_early = True
                break
        result = {k: v / count for k, v in totals.items()}
        if cfg.surrogate == "kl_penalty":
            self.beta = losses.adaptive_kl_beta(self.beta, result["kl"], cfg.kl_target)
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
