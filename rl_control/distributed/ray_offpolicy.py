"""Off-policy transitions streamed from Ray actors into the learner's replay buffer (issue 8).

``distributed: {backend: ray, ...}`` with ``algo.name`` sac, td3 or tqc (MLP actors) makes the
:class:`~rl_control.offpolicy_runner.OffPolicyRunner` collect through a :class:`RayTransitionCollector`:

- Each of the W workers is a Ray actor (:class:`TransitionWorker`) owning a slice ``[lo, hi)`` of the
  ``env.num_envs`` envs (seeded as locally) and a copy of the algorithm, whose own ``explore`` /
  ``random_actions`` pick the actions, so collection behaves as the local loop does.
- Per iteration the learner puts the actor's ``state_dict`` (weights and observation normalizer) into Ray's
  object store once; every worker steps its envs ``iteration_steps / num_envs`` times (random actions while the
  run is still in ``warmup_steps``) and returns the chunk. The learner adds the chunks to its replay buffer
  one vector step at a time, envs in worker order (the local buffer's layout, so a run without lost workers is
  reproducible), updates the normalizer, then does ``utd_ratio`` updates per transition as the local loop.
  Weights are therefore at most one iteration old while collecting (locally: fresh every vector step).
- A lost worker is replaced by the shared :class:`~rl_control.distributed.ray_rollout.RayWorkerPool` logic;
  the replacement starts fresh episodes on its slice and redoes the chunk. The episodes it cut are closed in
  the replay buffer as truncated (bootstrapping from the last observation stored), events go to
  ``distributed_events.jsonl``.

The replay buffer, optimizer and every RNG the updates use stay in the learner, so checkpoints and resume are
unchanged (workers' action noise restarts from their seeds after a resume).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rl_control.distributed.ray_rollout import (
    RayWorkerPool,
    _nbytes,
    _node_id,
    policy_weights,
    worker_info,
    worker_vector_env,
)

if TYPE_CHECKING:
    from rl_control.config import RunConfig
    from rl_control.offpolicy_networks import OffPolicyActor
    from rl_control.replay import ReplayBuffer

CHUNK_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")
"""Per-step arrays of a chunk, [T, n, ...]: what :func:`add_chunks` writes into the replay buffer."""


class TransitionWorker:
    """Steps one slice of the envs with the algorithm's exploration policy; a Ray actor of
    :class:`RayTransitionCollector`, plain Python so it works (and is tested) without Ray.

    Args:
        cfg: The run's config (task, randomization, policy, off-policy algorithm, torch threads).
        lo: First env index of this worker's slice (global numbering, decides the env seeds).
        hi: One past the last env index.
        seed: Episode seed base: env i (global index) is reset with ``seed + i``.
        rng_seed: Seed of this worker's action generators (numpy for warm-up actions, torch for exploration
            noise), as the local runner seeds its own with ``cfg.seed``.
    """

    def __init__(self, cfg: RunConfig, lo: int, hi: int, seed: int, rng_seed: int) -> None:
        from rl_control.algorithms import make_offpolicy_algorithm
        from rl_control.algorithms.offpolicy_base import SpaceSpec

        torch.set_num_threads(cfg.runner.torch_threads)
        self.cfg, self.lo, self.hi = cfg, lo, hi
        self.venv = worker_vector_env(cfg, lo, hi, seed)
        spec = SpaceSpec.from_spaces(self.venv.single_observation_space, self.venv.single_action_space)
        # The whole algorithm (critics included, unused here): its explore() is the one the learner would run.
        self.algo = make_offpolicy_algorithm(spec, cfg.policy, cfg.algo)
        self.np_rng = np.random.default_rng(rng_seed)
        self.generator = torch.Generator().manual_seed(rng_seed)
        self.reset(seed)

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what its envs look like."""
        return worker_info(self.venv, self.lo, self.hi)

    def reset(self, seed: int | None) -> np.ndarray:
        """Start new episodes (env i reset with ``seed + i``); the first observations [n, D]."""
        self.obs, _ = self.venv.reset(seed=None if seed is None else seed + self.lo)
        return self.obs

    def collect(self, weights: dict[str, np.ndarray], steps: int, random_steps: int = 0) -> dict[str, Any]:
        """Load the actor ``weights`` and step every env of the slice ``steps`` times.

        The first ``random_steps`` steps take uniform random actions (the run's warm-up), the rest the
        algorithm's exploration policy, exactly as ``OffPolicyRunner`` acts locally.

        Returns:
            ``obs`` [T, n, D] (observation acted on), ``actions`` [T, n, A] (normalized; discrete: [T, n] float
            indices), ``rewards`` [T, n] (raw env rewards), ``next_obs`` [T, n, D] (the real final observation
            where an episode ended), all float32; ``terminated``, ``truncated`` bool [T, n]; ``last_obs``
            [n, D] (where the envs continue from); ``episodes`` (return, length, success lists of ended
            episodes); ``term_sums`` {name: sum over t of the slice's mean reward term}; ``collect_s``,
            ``node_id``, ``pid``.
        """
        from rl_control.runner import record_episodes

        t0 = time.perf_counter()
        algo, venv, T, n = self.algo, self.venv, steps, self.hi - self.lo
        algo.actor.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        D = self.obs.shape[1]
        act_shape = () if algo.spec.discrete else (algo.spec.action_size,)
        out = {
            "obs": np.zeros((T, n, D), np.float32), "actions": np.zeros((T, n, *act_shape), np.float32),
            "rewards": np.zeros((T, n), np.float32), "next_obs": np.zeros((T, n, D), np.float32),
            "terminated": np.zeros((T, n), bool), "truncated": np.zeros((T, n), bool),
        }
        episodes: dict[str, list] = {"return": [], "length": [], "success": []}
        term_sums: dict[str, float] = {}
        obs = self.obs
        for t in range(T):
            if t < random_steps:
                actions = algo.random_actions(n, self.np_rng)
            else:
                actions, _ = algo.explore(torch.from_numpy(obs), None, None, self.generator)
            next_obs, reward, term, trunc, info = venv.step(algo.env_actions(actions))
            done = term | trunc
            real_next = next_obs.copy()
            if done.any():  # the vector env auto-resets: the observation the episode really ended in
                real_next[done] = info["final_obs"][done]
            out["obs"][t], out["actions"][t], out["rewards"][t] = obs, actions.numpy(), reward
            out["next_obs"][t], out["terminated"][t], out["truncated"][t] = real_next, term, trunc
            record_episodes(info, done, episodes)
            for name, vals in info.get("reward_terms", {}).items():
                term_sums[name] = term_sums.get(name, 0.0) + float(np.mean(vals))
            obs = next_obs
        self.obs = obs
        return {**out, "last_obs": obs.copy(), "episodes": episodes, "term_sums": term_sums,
                "collect_s": time.perf_counter() - t0, "node_id": _node_id(), "pid": os.getpid()}

    def close(self) -> None:
        self.venv.close()


def add_chunks(
    replay: ReplayBuffer, slices: list[tuple[int, int]], results: list[dict[str, Any]], reward_scale: float,
    episode_stats: dict,
) -> tuple[np.ndarray, dict[str, float]]:
    """Add the workers' chunks (:meth:`TransitionWorker.collect`) to ``replay``, one vector step at a time.

    Envs are laid out in worker order (worker k's slice fills columns ``[lo, hi)``), rewards are multiplied by
    ``reward_scale`` as in the local loop, and ended episodes go to ``episode_stats``. Returns the assembled
    observations [T, N, D] (for the learner's normalizer) and {name: sum over t of the mean reward term}.
    """
    from rl_control.runner import merge_episode_windows

    N = slices[-1][1]
    data = {name: np.concatenate([r[name] for r in results], axis=1) for name in CHUNK_FIELDS}
    last_obs = np.concatenate([r["last_obs"] for r in results])
    # After step t the envs continue from obs[t + 1] (after the chunk: last_obs); where an episode ended that
    # is the next episode's first observation and next_obs holds the real final one.
    cont = np.concatenate([data["obs"][1:], last_obs[None]])
    for t in range(data["obs"].shape[0]):
        replay.add(data["actions"][t], data["rewards"][t] * reward_scale, data["terminated"][t],
                   data["truncated"][t], cont[t], data["next_obs"][t])
    term_sums: dict[str, float] = {}
    for (lo, hi), r in zip(slices, results, strict=True):
        merge_episode_windows(episode_stats, r["episodes"])
        for name, total in r["term_sums"].items():
            term_sums[name] = term_sums.get(name, 0.0) + total * (hi - lo) / N
    return data["obs"], term_sums


class RayTransitionCollector(RayWorkerPool):
    """Transition workers on a Ray cluster, standing in for the off-policy runner's vector env.

    Use: ``attach(actor)``, ``reset(seed)`` (then ``replay.start`` with its observations), ``collect(...)`` per
    iteration, ``close()`` at the end.
    """

    def __init__(self, cfg: RunConfig, events_path: str | Path | None = None) -> None:
        self.actor: OffPolicyActor | None = None
        self._fresh: set[int] = set()  # replaced workers whose new episodes the replay buffer has not seen
        super().__init__(cfg, events_path, TransitionWorker)

    def attach(self, actor: OffPolicyActor) -> None:
        """The learner's actor, whose weights (and normalizer) are broadcast every iteration."""
        self.actor = actor

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        obs = super().reset(seed, options)
        self._fresh.clear()  # the caller starts every env's episode in the replay buffer
        return obs

    def _replace(self, k: int, reason: str) -> None:
        super()._replace(k, reason)
        self._fresh.add(k)

    def collect(
        self, replay: ReplayBuffer, steps: int, random_steps: int, episode_stats: dict
    ) -> tuple[np.ndarray, dict[str, float], dict[str, float]]:
        """``steps`` vector steps from every worker into ``replay``.

        Returns :func:`add_chunks`' observations and reward-term sums, and ``distributed/*`` metrics (timings,
        bytes moved, replacements this iteration).
        """
        if self.actor is None:
            raise RuntimeError("RayTransitionCollector.collect before attach(actor)")
        ray = self._ray
        t0 = time.perf_counter()
        weights = policy_weights(self.actor)
        weights_ref = ray.put(weights)
        t1 = time.perf_counter()
        replaced_before = self.replacements_total
        results = self._call_all(lambda w, k: w.collect.remote(weights_ref, steps, random_steps))
        t2 = time.perf_counter()
        for k in sorted(self._fresh):
            lo, hi = self.slices[k]
            replay.start(results[k]["obs"][0], np.arange(lo, hi))
        self._fresh.clear()
        obs, term_sums = add_chunks(replay, self.slices, results, self.cfg.algo.reward_scale, episode_stats)
        for k, r in enumerate(results):
            self._placed(k, r)
        t3 = time.perf_counter()
        worker_s = max(r["collect_s"] for r in results)
        self.last_timing = {
            "broadcast_s": t1 - t0, "gather_s": t2 - t1, "assemble_s": t3 - t2, "worker_max_s": worker_s,
            "overhead_s": (t3 - t0) - worker_s, "replaced": float(self.replacements_total - replaced_before),
            "weights_bytes": float(sum(v.nbytes for v in weights.values())),
            "result_bytes": float(sum(_nbytes(r) for r in results)),
        }
        return obs, term_sums, {f"distributed/{k}": v for k, v in self.last_timing.items()}
