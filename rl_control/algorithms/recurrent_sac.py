"""Recurrent Soft Actor-Critic: LSTM actor and LSTM critics trained on sequences from the replay buffer.

Selected by ``algo.name=sac`` with ``policy.kind=lstm`` (continuous actions). The pieces:

- Actor: :class:`~rl_control.offpolicy_networks.OffPolicyActor` with its own LSTM (exportable, state
  [1, 2, B, H]); collection carries its state per env and zeroes it at episode starts.
- Critics: one critic LSTM encodes the observation history; the twin Q heads (one batched ensemble) read
  [h_t, a_t]. The target critic has its own copy of LSTM and heads.
- Sequences: the buffer hands out windows of ``burn_in + sequence_length`` transitions of one episode.
  Hidden states are **not** stored in the buffer (they go stale as the networks learn): every window
  starts from a zero state and its first ``burn_in`` steps only refresh it ("burn-in", Kapturowski et al.
  2019, R2D2); the loss covers the remaining steps. A window that begins at an episode's first step has
  an exact zero state, so there the loss covers every step (the buffer moves window starts that fall
  within ``burn_in`` steps after an episode start back to that start, so early steps are trained too).
- Targets are one-step soft Q targets, y_t = r_t + gamma (1 - term_t) (min Q'(h'_{t+1}, a') - alpha log pi),
  with h'_{t+1} the target LSTM's state after o_{t+1} (the real final observation after a truncation).

sb3-contrib has no recurrent SAC (its issue 201 is open); this follows the recipe of R2D2 applied to SAC
(as in Ni et al. 2022, "Recurrent model-free RL can be a strong baseline for many POMDPs").
"""

from __future__ import annotations

import torch
from torch import nn

from rl_control import offpolicy_math as M
from rl_control.algorithms.offpolicy_base import OffPolicyAlgorithm, SpaceSpec
from rl_control.config import PolicyConfig, SACConfig
from rl_control.offpolicy_networks import CriticEnsemble, OffPolicyActor, target_copy
from rl_control.replay import SequenceBatch


class RecurrentCritic(nn.Module):
    """Critic LSTM over observations + E Q heads over [h_t, a_t], evaluated in one batched pass."""

    def __init__(self, obs_size: int, action_size: int, cfg: PolicyConfig, ensemble: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(obs_size, cfg.lstm_hidden)
        self.heads = CriticEnsemble(cfg.lstm_hidden + action_size, 1, cfg.hidden_sizes, ensemble, cfg.activation)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalized observations [T, S, D] from a zero state -> LSTM outputs [T, S, H]."""
        return self.lstm(x)[0]

    def q(self, feats: torch.Tensor, actions: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """feats [T, S, H], actions [T, S, A] -> Q [E, T, S]."""
        T, S = feats.shape[:2]
        inp = torch.cat([feats, actions], -1).reshape(T * S, -1)
        return self.heads(inp, detach_params).view(-1, T, S)


class RecurrentSAC(OffPolicyAlgorithm):
    """SAC with LSTM actor and critics, trained on replayed sequences with burn-in."""

    uses_sequences = True

    def __init__(self, spec: SpaceSpec, policy_cfg: PolicyConfig, cfg: SACConfig) -> None:
        super().__init__(spec)
        if spec.discrete:
            raise ValueError("recurrent SAC supports continuous actions only; use an MLP policy for discrete SAC")
        if policy_cfg.kind != "lstm":
            raise ValueError("RecurrentSAC needs policy.kind=lstm")
        if cfg.n_step != 1:
            # Its targets are one-step TD targets inside each replayed sequence; an ignored n would be a lie.
            raise ValueError(f"recurrent SAC uses one-step targets: set algo.n_step=1 (got {cfg.n_step})")
        self.cfg = cfg
        self.actor = OffPolicyActor(spec.obs_size, spec.action_size, policy_cfg, "squashed_gaussian",
                                    spec.action_low, spec.action_high)
        self.critic = RecurrentCritic(spec.obs_size, spec.action_size, policy_cfg)
        self.critic_target = target_copy(self.critic)
        target = cfg.target_entropy if cfg.target_entropy is not None else -float(spec.action_size)
        self._init_soft_learning(cfg, target)

    @torch.no_grad()
    def explore(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, _, new_state = self.actor.step(obs, state, starts)
        mean, log_std = self.actor.split(out)
        action = M.squashed_gaussian_sample(mean, log_std, torch.randn(mean.shape, generator=generator))[0]
        return action, new_state

    def update(self, batch: SequenceBatch) -> dict[str, float]:
        cfg = self.cfg
        W1, S = batch.obs.shape[:2]  # W + 1 observations per window
        x = self.actor.normalize(batch.obs)  # [W + 1, S, D]
        alpha = self.alpha
        # Loss mask: stored transitions of the window's episode, after burn-in unless the state is exact.
        pos = torch.arange(W1 - 1).unsqueeze(-1)
        mask = batch.mask * ((pos >= cfg.burn_in) | batch.first_is_start.unsqueeze(0)).float()  # [W, S]
        denom = mask.sum().clamp_min(1.0)
        # One fused LSTM call per network over the whole window, all from zero states.
        out, _ = self.actor.head(x, self.actor.initial_state(S))  # [W + 1, S, 2A]
        mean, log_std = self.actor.split(out)
        feats = self.critic.features(x[:-1])  # [W, S, H]
        with torch.no_grad():
            target_feats = self.critic_target.features(x)[1:]  # state after o_{t+1}, [W, S, H]
            a_n, logp_n = M.squashed_gaussian_sample(mean[1:], log_std[1:], torch.randn_like(mean[1:]))
            q_n = self.critic_target.q(target_feats, a_n).min(0).values  # [W, S]
            y = M.soft_q_target(batch.rewards, batch.discounts, q_n - alpha * logp_n)
            y = M.clip_to_return_bounds(y, cfg.reward_bounds, cfg.gamma)
        q = self.critic.q(feats, batch.actions)  # [2, W, S]
        critic_loss = 0.5 * ((q - y).pow(2) * mask).sum() / denom
        a_pi, logp = M.squashed_gaussian_sample(mean[:-1], log_std[:-1], torch.randn_like(mean[:-1]))
        # The actor's gradient flows through dQ/da only: critic features and weights are constants here.
        q_pi = self.critic.q(feats.detach(), a_pi, detach_params=True).min(0).values  # [W, S]
        actor_loss = ((alpha * logp - q_pi) * mask).sum() / denom
        logp_masked = logp[mask > 0]
        self._soft_step(critic_loss + actor_loss, logp_masked)
        return {"loss/critic": critic_loss.item(), "loss/actor": actor_loss.item(), "alpha": alpha.item(),
                "entropy": -logp_masked.mean().item(), "q": ((q.detach().mean(0) * mask).sum() / denom).item()}
