"""The adapter that lets any Gymnasium or Gymnasium-Robotics environment id train like our own tasks.

:func:`make_gymnasium_env` is what :func:`sim.tasks.make_env` calls for an id that is not one of our
robot tasks. It

- registers the Gymnasium-Robotics ids (``FetchReach-v4``, ...) on first use, if that package is
  installed (importing it registers them; it is imported only when an id is not already known, because
  the import takes a second);
- builds the env with ``gymnasium.make``, so Gymnasium's ``TimeLimit`` ends episodes at the registered
  step limit with ``truncated=True``; ``terminated`` stays the environment's own terminal signal (for
  example InvertedPendulum-v5's pole falling). The two are never merged;
- flattens a ``Dict`` observation (the goal-conditioned robotics envs) into one float32 vector with
  :class:`FlattenDictObservation`, so every algorithm sees a ``Box``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")
"""Order of the flattened blocks of a goal-conditioned (Gymnasium-Robotics) observation."""


class FlattenDictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Concatenate the ``Box`` entries of a ``Dict`` observation into one float32 vector.

    The order is ``keys`` if given, else :data:`GOAL_KEYS` when the space has exactly those keys (the
    Gymnasium-Robotics layout), else the keys in sorted order. ``slices[key]`` says where each entry sits,
    e.g. for FetchReach-v4: observation [0:10] (gripper position m, finger state, velocities),
    achieved_goal [10:13] (gripper position, m), desired_goal [13:16] (goal position, m).

    Unlike ``gymnasium.wrappers.FlattenObservation`` (which orders keys alphabetically and keeps float64)
    the layout here is explicit and the dtype matches our own tasks.
    """

    def __init__(self, env: gym.Env, keys: Sequence[str] | None = None) -> None:
        # RecordConstructorArgs lets ``env.spec.make()`` rebuild the wrapped env (check_env does).
        gym.utils.RecordConstructorArgs.__init__(self, keys=None if keys is None else tuple(keys))
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"FlattenDictObservation needs a Dict observation space, got {space}")
        if keys is None:
            keys = GOAL_KEYS if set(space.spaces) == set(GOAL_KEYS) else sorted(space.spaces)
        missing = [k for k in keys if k not in space.spaces]
        if missing or len(set(keys)) != len(space.spaces):
            raise ValueError(f"keys {list(keys)} must name each entry of the Dict space {list(space.spaces)}")
        boxes = []
        for key in keys:
            sub = space.spaces[key]
            if not isinstance(sub, gym.spaces.Box):
                raise TypeError(f"observation entry {key!r} is {sub}, only Box entries can be flattened")
            boxes.append(sub)
        self.keys: tuple[str, ...] = tuple(keys)
        self.slices: dict[str, slice] = {}
        start = 0
        for key, box in zip(self.keys, boxes, strict=True):
            self.slices[key] = slice(start, start + int(np.prod(box.shape)))
            start = self.slices[key].stop
        low = np.concatenate([b.low.ravel() for b in boxes]).astype(np.float32)
        high = np.concatenate([b.high.ravel() for b in boxes]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        """The Dict observation as one vector in ``self.keys`` order, float32, shape [obs_size]."""
        return np.concatenate([np.asarray(observation[k], dtype=np.float32).ravel() for k in self.keys])


def register_optional_suites(task_id: str) -> None:
    """Make ``task_id`` known to Gymnasium by importing the optional suites that register ids."""
    if task_id in gym.registry:
        return
    try:
        module = importlib.import_module("gymnasium_robotics")
    except ImportError:
        return  # not installed: gym.make will then say the id is unknown
    gym.register_envs(module)


def make_gymnasium_env(task_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """Build a Gymnasium / Gymnasium-Robotics env with a ``Box`` observation (see the module docstring).

    Raises:
        gymnasium.error.Error: the id is unknown (``sim.tasks.make_env`` turns this into a ValueError).
    """
    register_optional_suites(task_id)
    env = gym.make(task_id, render_mode=render_mode, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = FlattenDictObservation(env)
    return env
