"""One module per algorithm; each is a small class with ``update(...) -> dict[str, float]``.

On-policy algorithms share one constructor signature ``(policy, cfg, total_iterations)`` and learn
from a :class:`~rl_control.buffers.RolloutBuffer` via ``update(buffer, rng)``; they also provide
``state_dict()``/``load_state_dict()`` for checkpoints.

Off-policy algorithms (driven by :class:`rl_control.offpolicy_runner.OffPolicyRunner`) share the
constructor ``(spec, policy_cfg, cfg)``, act with ``explore(obs, state, starts, generator)`` and learn from
replay batches via ``update(batch)``; see :mod:`rl_control.algorithms.offpolicy_base`.
"""

from __future__ import annotations

import importlib

# name -> "module:Class"; the config's ``algo.name`` selects the entry.
ON_POLICY = {
    "ppo": "rl_control.algorithms.ppo:PPO",
    "trpo": "rl_control.algorithms.trpo:TRPO",
    "acktr": "rl_control.algorithms.acktr:ACKTR",
}


def make_algorithm(policy, cfg, total_iterations: int):
    """Instantiate the algorithm named by ``cfg.name``."""
    try:
        module_name, class_name = ON_POLICY[cfg.name].split(":")
    except KeyError:
        raise ValueError(f"unknown algorithm {cfg.name!r}; known: {sorted(ON_POLICY)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(policy, cfg, total_iterations)


# name -> "module:Class" of the MLP variant; SAC with ``policy.kind=lstm`` is recurrent SAC.
OFF_POLICY = {
    "sac": "rl_control.algorithms.sac:SAC",
    "td3": "rl_control.algorithms.td3:TD3",
    "tqc": "rl_control.algorithms.tqc:TQC",
}
RECURRENT_OFF_POLICY = {"sac": "rl_control.algorithms.recurrent_sac:RecurrentSAC"}


def is_off_policy(name: str) -> bool:
    """Whether ``algo.name`` is trained by the off-policy runner (replay buffer) instead of the on-policy one."""
    return name in OFF_POLICY


def make_offpolicy_algorithm(spec, policy_cfg, cfg):
    """Instantiate the off-policy algorithm named by ``cfg.name`` for ``policy_cfg.kind`` (mlp or lstm)."""
    table = RECURRENT_OFF_POLICY if policy_cfg.kind == "lstm" else OFF_POLICY
    if cfg.name not in table:
        kinds = sorted(RECURRENT_OFF_POLICY) if policy_cfg.kind == "lstm" else sorted(OFF_POLICY)
        raise ValueError(f"no off-policy algorithm {cfg.name!r} for policy.kind={policy_cfg.kind!r}; known: {kinds}")
    module_name, class_name = table[cfg.name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec, policy_cfg, cfg)
