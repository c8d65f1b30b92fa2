"""Second-order optimization pieces for the trust-region algorithms (TRPO, ACKTR).

- :func:`~rl_control.optim.conjugate_gradient.conjugate_gradient`: solve ``A x = b`` from ``v -> A v``.
- :class:`~rl_control.optim.kfac.KFAC`: Kronecker-factored natural-gradient optimizer for Linear layers.
"""

from rl_control.optim.conjugate_gradient import conjugate_gradient
from rl_control.optim.kfac import KFAC

__all__ = ["KFAC", "conjugate_gradient"]
