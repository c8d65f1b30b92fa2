"""Conjugate gradient for symmetric positive-definite systems given only matrix-vector products.

TRPO (Schulman et al. 2015, appendix C) and the trust-region value regression (Schulman et al. 2016,
section 5) never form the Fisher or Gauss-Newton matrix: they solve ``A x = b`` with a handful of
products ``v -> A v`` computed by double back-propagation. Ten iterations are usually enough because
only the direction of ``x`` matters and the step is rescaled to the trust region afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iterations: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximate solution of ``A x = b`` for a symmetric positive-definite ``A``, starting at x = 0.

    Standard CG (Nocedal & Wright 2006, algorithm 5.2). With exact arithmetic it solves an n-dimensional
    system in n iterations; stopped early it returns the minimizer of ``0.5 x^T A x - b^T x`` over the
    Krylov subspace of the iterations done, which is what TRPO's step direction needs.

    Args:
        matvec: ``v -> A v`` for vectors of shape [n]; must not modify its argument.
        b: right-hand side, [n].
        iterations: maximum number of CG iterations (= calls of ``matvec``).
        residual_tol: stop when the squared residual norm ``||b - A x||^2`` falls below this.

    Returns:
        x, [n], same dtype as ``b``.

    Raises:
        ValueError: if ``b`` is not a vector or ``iterations`` < 1.
    """
    if b.dim() != 1:
        raise ValueError(f"b must be a vector [n], got shape {tuple(b.shape)}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x at x = 0
    p = r.clone()  # search direction, A-conjugate to the previous ones
    r_dot_r = torch.dot(r, r)
    for _ in range(iterations):
        if r_dot_r <= residual_tol:
            break
        Ap = matvec(p)
        p_Ap = torch.dot(p, Ap)
        if p_Ap <= 0:
            # A is not positive definite along p (numerical round-off or a broken product): stop with the
            # current iterate rather than divide by zero or walk uphill.
            break
        alpha = r_dot_r / p_Ap
        x = x + alpha * p
        r = r - alpha * Ap
        new_r_dot_r = torch.dot(r, r)
        p = r + (new_r_dot_r / r_dot_r) * p
        r_dot_r = new_r_dot_r
    return x
