"""Scale-out of rollout collection beyond one machine (issue 8).

``ray_rollout`` holds the Ray backend: rollout workers are Ray actors, each owning a vector env and a policy
copy. Ray itself is an optional dependency (the ``ray`` extra); nothing here imports it at module level, so
the package can be imported (for its pure helpers and the benchmark's projection) without Ray installed.
"""

from rl_control.distributed.ray_rollout import RayRolloutCollector, RolloutWorker, split_envs

__all__ = ["RayRolloutCollector", "RolloutWorker", "split_envs"]
