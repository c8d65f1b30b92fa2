"""One module per algorithm; each is a small class with ``update(...) -> dict[str, float]``.

On-policy algorithms share one constructor signature ``(policy, cfg, total_iterations)`` and learn
from a :class:`~rl_control.buffers.RolloutBuffer` via ``update(buffer, rng)``; they also provide
``state_dict()``/``load_state_dict()`` for checkpoints.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; the config's ``algo.name`` selects the entry.
ON_POLICY = {
    "ppo": "rl_control.algorithms.ppo:PPO",
}


def make_algorithm(policy, cfg, total_iterations: int):
    """Instantiate the algorithm named by ``cfg.name``."""
    try:
        module_name, class_name = ON_POLICY[cfg.name].split(":")
    except KeyError:
        raise ValueError(f"unknown algorithm {cfg.name!r}; known: {sorted(ON_POLICY)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(policy, cfg, total_iterations)
