"""Trust Region Policy Optimization (Schulman et al. 2015) with GAE (Schulman et al. 2016).

One iteration:

1. Surrogate ``L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A) (+ entropy bonus)`` and its gradient g
   at theta_old.
2. Natural-gradient direction ``x ~= F^-1 g`` by conjugate gradient, where ``F v`` is the Hessian of the
   mean KL(pi_old || pi_theta) at theta_old times v, by double back-propagation, plus damping ``c v``
   (TRPO appendix C). The Fisher matrix is never formed.
3. Step scaled to the KL radius: ``s = sqrt(2 delta / x^T F x) x`` so the quadratic KL estimate equals delta.
4. Backtracking line search over ``s, s/2, s/4, ...``: accept the first point where the measured mean KL
   is <= delta *and* the surrogate improves; if none does, keep the old policy.
5. Value function: Adam regression on the GAE returns (default) or, with ``value_method=trust_region``,
   the constrained regression of the GAE paper (section 5): minimize the squared error subject to
   ``mean((V - V_old)^2) / (2 sigma^2) <= epsilon``, sigma^2 the mean squared error before the update,
   solved with CG on the Gauss-Newton matrix.

Recurrent policies: supported when actor and critic have separate LSTMs (``policy.shared_trunk: false``):
the whole rollout is one batch of padded sequences with masks, and every product back-propagates
through the LSTM. A shared trunk is refused, because the value fit would move the policy outside the
trust region.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rl_control import losses
from rl_control.buffers import Minibatch, RolloutBuffer
from rl_control.config import TRPOConfig
from rl_control.networks import ActorCritic
from rl_control.optim.conjugate_gradient import conjugate_gradient


# ---- flat-parameter helpers ------------------------------------------------------------------------
def flat_grad(output: torch.Tensor, params: Sequence[nn.Parameter], **kwargs) -> torch.Tensor:
    """d output / d params as one vector [P] (parameters that ``output`` does not use get zeros)."""
    grads = torch.autograd.grad(output, params, allow_unused=True, **kwargs)
    parts = [
        (torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)
    ]
    return torch.cat(parts)


def get_flat(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Copy of the parameters as one vector [P]."""
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


@torch.no_grad()
def set_flat(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    """Write a vector [P] back into the parameters, in place (optimizer state keeps pointing at them)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def fisher_vector_product(
    divergence: torch.Tensor, params: Sequence[nn.Parameter], damping: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (H + damping I) v``, H the Hessian of ``divergence`` w.r.t. ``params``.

    ``divergence`` is a mean KL(p_old || p_theta) whose "old" side is detached at the current parameters,
    so it is zero with zero gradient there and its Hessian is the Fisher information matrix (TRPO,
    appendix C). For the value trust region it is ``0.5 mean((V - V_old)^2)`` (the KL between unit-variance
    Gaussians), whose Hessian there is the Gauss-Newton matrix ``J^T J / N``.

    Args:
        divergence: scalar built from ``params`` with its graph.
        params: parameters, P values in total.
        damping: added multiple of the identity (keeps CG well conditioned on flat directions).

    Returns:
        A function of v [P] returning [P]; it can be called many times (the graph is retained).
    """
    grad = flat_grad(divergence, params, create_graph=True)  # [P], a function of params

    def product(v: torch.Tensor) -> torch.Tensor:
        # d/dtheta (grad . v) = H v: one extra backward pass through the retained double-backprop graph.
        return flat_grad(torch.dot(grad, v), params, retain_graph=True) + damping * v

    return product


@dataclass(frozen=True)
class LineSearchResult:
    accepted: bool
    fraction: float  # step fraction taken (0 when rejected)
    objective: float  # surrogate at the kept parameters
    kl: float  # measured mean KL at the kept parameters (0 when rejected)


def backtracking_line_search(
    params: Sequence[nn.Parameter],
    full_step: torch.Tensor,
    evaluate: Callable[[], tuple[float, float]],
    old_objective: float,
    max_kl: float,
    steps: int = 10,
    shrink: float = 0.8,
) -> LineSearchResult:
    """Try ``theta_old + shrink^k * full_step`` for k = 0..steps-1; keep the first acceptable point.

    A point is acceptable when the measured KL is within ``max_kl`` and the objective strictly improves
    (TRPO section 6: the quadratic KL model can be wrong far from theta_old, so the constraint is checked
    on the real KL). If no point is acceptable the parameters are restored exactly.

    Args:
        params: the parameters being stepped, P values in total.
        full_step: [P] step at fraction 1.
        evaluate: ``() -> (objective, mean KL)`` at the parameters currently set (higher objective is better).
        old_objective: objective at the old parameters.
        max_kl: trust-region radius delta.
        steps: number of fractions tried.
        shrink: factor between fractions.
    """
    old = get_flat(params)
    fraction = 1.0
    for _ in range(steps):
        set_flat(params, old + fraction * full_step)
        objective, kl = evaluate()
        if math.isfinite(objective) and math.isfinite(kl) and kl <= max_kl and objective > old_objective:
            return LineSearchResult(True, fraction, objective, kl)
        fraction *= shrink
    set_flat(params, old)
    return LineSearchResult(False, 0.0, old_objective, 0.0)


# ---- the algorithm ---------------------------------------------------------------------------------
class TRPO:
    """TRPO update step; the runner collects rollouts, this class only learns from them."""

    def __init__(self, policy: ActorCritic, cfg: TRPOConfig, total_iterations: int) -> None:
        if policy.shares_trunk:
            raise ValueError(
                "TRPO needs separate actor and critic trunks (policy.shared_trunk: false): with a shared "
                "trunk the value fit would change the policy outside the trust region"
            )
        self.policy, self.cfg = policy, cfg
        self.actor_params = policy.actor_parameters()
        self.critic_params = policy.critic_parameters()
        self.vf_optimizer = torch.optim.Adam(self.critic_params, lr=cfg.vf_lr, eps=1e-5)
        self.total_iterations = max(1, total_iterations)
        self.iteration = 0

    # ---- policy --------------------------------------------------------------------------------------
    def _surrogate(
        self, out: torch.Tensor, mb: Minibatch, adv: torch.Tensor, old_log_std: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(surrogate, mean KL(old || current), mean entropy) of the policy output ``out``, all scalars."""
        log_prob, entropy = self.policy.distribution(out, mb.actions)
        ratio = torch.exp(log_prob - mb.log_probs)
        ent = losses.masked_mean(entropy, mb.mask)
        surrogate = losses.masked_mean(ratio * adv, mb.mask) + self.cfg.entropy_coef * ent
        kl = losses.masked_mean(self.policy.kl(mb.old_out, out, old_log_std), mb.mask)
        return surrogate, kl, ent

    def _policy_step(self, mb: Minibatch) -> dict[str, float]:
        cfg, policy, params = self.cfg, self.policy, self.actor_params
        adv = mb.advantages
        if cfg.normalize_advantages:
            adv = losses.normalize_advantages(adv, mb.mask)
        old_log_std = policy.log_std.detach().clone() if policy.log_std is not None else None
        out, _, _ = policy(mb.obs, mb.state)
        surrogate, _, entropy = self._surrogate(out, mb, adv, old_log_std)
        g = flat_grad(surrogate, params, retain_graph=True)
        # The KL for the Fisher products compares the *current* output (detached) with itself, so its
        # gradient is exactly zero at theta_old and its Hessian is the Fisher there.
        kl_self = losses.masked_mean(policy.kl(out.detach(), out, old_log_std), mb.mask)
        fvp = fisher_vector_product(kl_self, params, cfg.cg_damping)
        x = conjugate_gradient(fvp, g, cfg.cg_iters, cfg.cg_residual_tol)
        xFx = float(torch.dot(x, fvp(x)))
        stats = {"loss/policy": -surrogate.item(), "entropy": entropy.item(), "grad_norm": g.norm().item()}
        if not math.isfinite(xFx) or xFx <= 0.0:
            return {**stats, "kl": 0.0, "line_search/accepted": 0.0, "line_search/fraction": 0.0,
                    "surrogate_improvement": 0.0, "expected_improvement": 0.0}
        full_step = math.sqrt(2.0 * cfg.max_kl / xFx) * x  # 0.5 s^T F s = delta

        @torch.no_grad()
        def evaluate() -> tuple[float, float]:
            new_surrogate, new_kl, _ = self._surrogate(policy(mb.obs, mb.state)[0], mb, adv, old_log_std)
            return float(new_surrogate), float(new_kl)

        result = backtracking_line_search(
            params, full_step, evaluate, surrogate.item(), cfg.max_kl, cfg.line_search_steps,
            cfg.line_search_shrink,
        )
        return {**stats, "kl": result.kl, "line_search/accepted": float(result.accepted),
                "line_search/fraction": result.fraction,
                "surrogate_improvement": result.objective - surrogate.item(),
                "expected_improvement": float(torch.dot(g, full_step))}

    # ---- value function ------------------------------------------------------------------------------
    def _value_regression(self, buffer: RolloutBuffer, rng: np.random.Generator) -> dict[str, float]:
        cfg, total, count = self.cfg, 0.0, 0
        for _ in range(cfg.vf_epochs):
            for mb in buffer.minibatches(cfg.vf_minibatches, cfg.bptt_len, rng):
                _, values, _ = self.policy(mb.obs, mb.state)
                loss = losses.value_loss(values, mb.values, mb.returns, mb.mask)
                self.vf_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.vf_optimizer.step()
                total += loss.item()
                count += 1
        return {"loss/value": total / count}

    def _value_trust_region(self, mb: Minibatch) -> dict[str, float]:
        """One constrained Gauss-Newton step of the value function (Schulman et al. 2016, section 5).

        With residuals r = V - R and Jacobian J = dV/dphi over N samples, the squared-error gradient is
        g = J^T r / N and its Gauss-Newton matrix M = J^T J / N. CG solves (M + c I) x = g; the paper's
        direction -H^-1 g (H = M / sigma^2) is parallel to -x. The step -alpha x is scaled so that the
        quadratic estimate of mean((V - V_old)^2) / (2 sigma^2) equals epsilon, as in the paper, but never
        beyond alpha = 1, the minimizer of the Gauss-Newton model: going further would overshoot it.
        """
        cfg, params = self.cfg, self.critic_params
        _, values, _ = self.policy(mb.obs, mb.state)
        residual = values - mb.returns
        sigma2 = losses.masked_mean(residual.detach().pow(2), mb.mask).clamp_min(1e-8)
        loss = 0.5 * losses.masked_mean(residual.pow(2), mb.mask)
        g = flat_grad(loss, params, retain_graph=True)
        change = 0.5 * losses.masked_mean((values - values.detach()).pow(2), mb.mask)  # Hessian = M
        gnvp = fisher_vector_product(change, params, cfg.cg_damping)
        x = conjugate_gradient(gnvp, g, cfg.cg_iters, cfg.cg_residual_tol)
        xMx = float(torch.dot(x, gnvp(x)))  # quadratic estimate of mean((x . j_n)^2)
        alpha = 0.0
        if math.isfinite(xMx) and xMx > 0.0:
            alpha = min(1.0, math.sqrt(2.0 * cfg.vf_max_change * float(sigma2) / xMx))
            set_flat(params, get_flat(params) - alpha * x)
        with torch.no_grad():
            _, new_values, _ = self.policy(mb.obs, mb.state)
            new_loss = 0.5 * losses.masked_mean((new_values - mb.returns).pow(2), mb.mask)
            moved = losses.masked_mean((new_values - values.detach()).pow(2), mb.mask) / (2.0 * sigma2)
        return {"loss/value": loss.item(), "loss/value_after": float(new_loss), "value/step_fraction": alpha,
                "value/change": float(moved), "value/sigma2": float(sigma2)}

    # ---- one iteration -------------------------------------------------------------------------------
    def update(self, buffer: RolloutBuffer, rng: np.random.Generator) -> dict[str, float]:
        """One TRPO policy step and one value fit on the whole rollout."""
        # TRPO takes one step on the whole batch: the natural gradient needs the full-batch Fisher estimate.
        batch = next(buffer.minibatches(1, self.cfg.bptt_len, rng))
        stats = self._policy_step(batch)
        if self.cfg.value_method == "trust_region":
            stats.update(self._value_trust_region(batch))
        else:
            stats.update(self._value_regression(buffer, rng))
        if self.policy.log_std is not None:
            stats["action_std"] = float(self.policy.log_std.detach().exp().mean())
        self.iteration += 1
        return stats

    def state_dict(self) -> dict:
        return {"vf_optimizer": self.vf_optimizer.state_dict(), "iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.vf_optimizer.load_state_dict(state["vf_optimizer"])
        self.iteration = state["iteration"]
