"""Optimizers: second-order pieces for the trust-region algorithms (TRPO, ACKTR) and a lean fused Adam.

- :func:`~rl_control.optim.conjugate_gradient.conjugate_gradient`: solve ``A x = b`` from ``v -> A v``.
- :class:`~rl_control.optim.kfac.KFAC`: Kronecker-factored natural-gradient optimizer for Linear layers.
- :class:`~rl_control.optim.adam.FusedAdam`: ``torch.optim.Adam(fused=True)`` without its per-step overhead.
"""

from rl_control.optim.adam import FusedAdam
from rl_control.optim.conjugate_gradient import conjugate_gradient
from rl_control.optim.kfac import KFAC

__all__ = ["KFAC", "FusedAdam", "conjugate_gradient"]
