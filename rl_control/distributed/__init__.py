"""Scale-out of collection beyond one machine (issue 8).

``ray_rollout`` holds the Ray backend of the on-policy runner (rollout workers are Ray actors, each owning a
vector env and a policy copy) and the worker pool both backends share; ``ray_offpolicy`` streams off-policy
transitions from such actors into the learner's replay buffer. Ray itself is an optional dependency (the
``ray`` extra); nothing here imports it at module level, so the package can be imported (for its pure helpers
and the benchmark's projection) without Ray installed.
"""

from rl_control.distributed.ray_offpolicy import RayTransitionCollector, TransitionWorker
from rl_control.distributed.ray_rollout import RayRolloutCollector, RayWorkerPool, RolloutWorker, split_envs

__all__ = ["RayRolloutCollector", "RayTransitionCollector", "RayWorkerPool", "RolloutWorker", "TransitionWorker",
           "split_envs"]
