"""On-policy rollouts gathered from Ray actors on any number of machines (issue 8).

``distributed: {backend: ray, address: ..., workers: W}`` makes the on-policy :class:`~rl_control.runner.Runner`
collect through a :class:`RayRolloutCollector` instead of its in-process vector env:

- Each of the W workers is a Ray actor (:class:`RolloutWorker`) owning a ``sim.vector.make_vector_env`` with a
  contiguous slice ``[lo, hi)`` of the ``env.num_envs`` envs (env i is seeded ``seed + i`` exactly as in the
  local vector env) and a copy of the policy. Its episodes (observation, LSTM state, episode starts) carry over
  from one iteration to the next, as they do locally.
- Per iteration the learner puts the policy's ``state_dict`` (weights and observation normalizer) into Ray's
  object store once (``ray.put``; each node fetches it once), every worker loads it and steps ``T`` steps, and
  the learner copies the slices into its ``[T, N]`` :class:`~rl_control.buffers.RolloutBuffer`. Reward
  scaling, GAE and the update run in the learner exactly as in the local path; workers return raw rewards, so
  the stateful reward scaler and everything checkpointed stay in one place.
- A lost worker (its process or node died: ``RayActorError``, ``WorkerCrashedError``, ``NodeDiedError``,
  ``ObjectLostError``, or silent for ``worker_timeout_s``) is replaced by a new actor that starts fresh episodes
  on its slice and redoes that iteration's part; the others' results are kept, training does not stop. An error
  raised by our own code inside a worker (a bug, an env that raises) is not a lost worker: it stops training
  with the worker's traceback, since retrying would only repeat it.

The collector stands in for the runner's vector env (``single_observation_space``, ``single_action_space``,
``num_envs``, ``reset``, ``close``) and its :meth:`RayRolloutCollector.collect` has the signature of
``Runner._collect``, which keeps the runner's change to a few lines. Worker placement, losses and replacements
are appended to ``distributed_events.jsonl`` in the run folder.

Known traps (issue 8; the last one met while writing the tests): Ray binds the machine's external address
unless given ``node_ip_address``; every process of a cluster (``ray start`` and the learner) must agree on
``RAY_AUTH_MODE`` (and the token); actors reserving ``num_cpus=1`` on a 2-CPU node leave nothing for tasks, so a
private local cluster (``address: null``) reserves as many CPUs as the workers need; Ray rewrites ``127.0.0.1``
to the external address (other loopback addresses such as 127.0.0.2 are kept).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import gymnasium as gym

    from rl_control.buffers import RolloutBuffer
    from rl_control.config import DistributedConfig, RunConfig
    from rl_control.networks import ActorCritic
    from rl_control.normalizer import RewardScaler

log = logging.getLogger(__name__)

_REPLACEMENT_SEED_STRIDE = 104_729
"""Seed offset per replacement of a worker slot: a replacement starts episodes no earlier worker saw."""


def split_envs(num_envs: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` env slices, one per worker, sizes differing by at most one.

    Raises:
        ValueError: fewer envs than workers (every worker needs at least one env).
    """
    if workers < 1 or num_envs < workers:
        raise ValueError(f"cannot split {num_envs} envs over {workers} workers (each needs at least one)")
    base, extra = divmod(num_envs, workers)
    bounds, lo = [], 0
    for k in range(workers):
        hi = lo + base + (1 if k < extra else 0)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def policy_weights(policy: torch.nn.Module) -> dict[str, np.ndarray]:
    """The policy's ``state_dict`` as numpy arrays: Ray's object store hands these to every worker zero-copy."""
    return {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()}


def fill_buffer(
    buffer: RolloutBuffer, slices: list[tuple[int, int]], results: list[dict[str, Any]], cfg: RunConfig,
    reward_scaler: RewardScaler | None, episode_stats: dict,
) -> dict[str, float]:
    """Copy the workers' rollouts (:meth:`RolloutWorker.rollout`) into the learner's [T, N] buffer.

    Then, as the local loop does: rewards times ``algo.reward_scale``, through the reward scaler in time order,
    and GAE. Ended episodes are appended to ``episode_stats``. Returns ``{"reward_terms/<name>": per-step
    mean over all envs}``.
    """
    from rl_control.runner import merge_episode_windows

    T, N = buffer.T, buffer.N
    raw_rewards = torch.zeros(T, N)
    last_values = torch.zeros(N)
    term_sums: dict[str, float] = {}
    for (lo, hi), r in zip(slices, results, strict=True):
        sl = slice(lo, hi)
        for name in ("obs", "actions", "log_probs", "values", "final_values", "terminated", "truncated",
                     "starts", "out"):
            getattr(buffer, name)[:, sl] = torch.from_numpy(r[name])
        if buffer.states is not None:
            buffer.states[:, :, :, sl] = torch.from_numpy(r["states"])
        raw_rewards[:, sl] = torch.from_numpy(r["rewards"])
        last_values[sl] = torch.from_numpy(r["last_values"])
        merge_episode_windows(episode_stats, r["episodes"])
        for name, total in r["term_sums"].items():
            # The slice's per-step mean, weighted by its share of the envs: the mean over all envs.
            term_sums[name] = term_sums.get(name, 0.0) + total * (hi - lo) / N
    # The reward scaler is stateful per env and step: feed it in time order, as the local loop does.
    dones = buffer.terminated | buffer.truncated
    for t in range(T):
        rewards = raw_rewards[t] * cfg.algo.reward_scale
        if reward_scaler is not None:
            rewards = reward_scaler(rewards, dones[t])
        buffer.rewards[t] = rewards
    buffer.compute_returns(last_values, cfg.algo.gamma, cfg.algo.gae_lambda)
    return {f"reward_terms/{k}": v / T for k, v in term_sums.items()}


def worker_vector_env(cfg: RunConfig, lo: int, hi: int, seed: int) -> Any:
    """The vector env of a worker owning envs ``[lo, hi)``: env i seeded ``seed + i`` as in the local one."""
    from sim.vector import make_vector_env

    d = cfg.distributed
    # Actor processes hold Ray's gRPC threads: forking them is unsafe, so simulation processes inside a
    # worker come from a fork server (see sim/vector.py, design notes).
    extra: dict[str, Any] = {"context": "forkserver"} if d.env_workers > 0 else {}
    # One stepping thread per actor: Ray already places one actor per CPU, so the in-process kernel's
    # default of one thread per core would oversubscribe a machine running several actors.
    extra["threads"] = 1
    return make_vector_env(cfg.env.task, hi - lo, d.env_workers, cfg.env.randomization, seed=seed + lo, **extra)


# ---- the worker (a Ray actor) --------------------------------------------------------------------------------
class RolloutWorker:
    """Steps one slice of the envs with a policy copy; made a Ray actor by :class:`RayRolloutCollector`.

    Plain Python on purpose: the class works (and is tested) without Ray, and Ray wraps it with
    ``ray.remote(RolloutWorker)`` at actor creation, so importing this module never needs Ray.

    Args:
        cfg: The run's config (task, randomization, policy, algorithm's ``rollout_steps``, torch threads).
        lo: First env index of this worker's slice (global numbering, decides the env seeds).
        hi: One past the last env index.
        seed: Episode seed base: env i (global index) is reset with ``seed + i``.
        rng_seed: Seed of this worker's action-sampling generator.
    """

    def __init__(self, cfg: RunConfig, lo: int, hi: int, seed: int, rng_seed: int) -> None:
        from rl_control.runner import build_policy

        torch.set_num_threads(cfg.runner.torch_threads)
        self.cfg, self.lo, self.hi = cfg, lo, hi
        self.venv = worker_vector_env(cfg, lo, hi, seed)
        self.policy = build_policy(cfg, self.venv.single_observation_space, self.venv.single_action_space)
        self.generator = torch.Generator().manual_seed(rng_seed)
        self.reset(seed)

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what its envs look like."""
        return worker_info(self.venv, self.lo, self.hi)

    def reset(self, seed: int | None) -> np.ndarray:
        """Start new episodes (env i reset with ``seed + i``) and zero the recurrent state; the observations."""
        obs, _ = self.venv.reset(seed=None if seed is None else seed + self.lo)
        n = self.hi - self.lo
        self.obs = obs
        self.starts = torch.ones(n, dtype=torch.bool)
        self.state = self.policy.initial_state(n)
        return obs

    def rollout(self, weights: dict[str, np.ndarray], steps: int) -> dict[str, Any]:
        """Load ``weights`` and collect ``steps`` steps on every env of the slice.

        Mirrors ``Runner._collect`` step for step (same sampling, clipping, truncation bootstrap and LSTM state
        handling), but returns raw rewards and leaves reward scaling and GAE to the learner.

        Returns:
            Arrays with leading axes [T, n] (n = envs of this slice): ``obs`` [T, n, D], ``actions``
            [T, n(, A)], ``log_probs``, ``values``, ``rewards`` (raw env rewards), ``final_values`` [T, n],
            ``terminated``, ``truncated``, ``starts`` bool [T, n], ``out`` [T, n, A or K], ``states``
            [T, L, 2, n, H] or None; ``last_values`` [n] (bootstrap after the last step); ``episodes``
            (return, length, success lists of the episodes that ended); ``term_sums`` {name: sum over t of the
            slice's mean term}; timings ``load_s`` and ``rollout_s``; ``node_id`` and ``pid``.
        """
        from rl_control.rollout_policy import numpy_rollout_policy, policy_step
        from rl_control.runner import record_episodes

        t0 = time.perf_counter()
        self.policy.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
        t1 = time.perf_counter()
        policy, venv, T, n = self.policy, self.venv, steps, self.hi - self.lo
        D = policy.obs_size
        obs_buf = np.zeros((T, n, D), np.float32)
        act_shape = () if policy.discrete else (policy.action_size,)
        actions = np.zeros((T, n, *act_shape), np.int64 if policy.discrete else np.float32)
        log_probs, values, final_values = np.zeros((T, n), np.float32), np.zeros((T, n), np.float32), torch.zeros(T, n)
        outs = np.zeros((T, n, policy.action_size), np.float32)
        rewards = np.zeros((T, n), np.float32)
        terminated, truncated = np.zeros((T, n), bool), np.zeros((T, n), bool)
        starts_buf = torch.zeros(T, n, dtype=torch.bool)
        shape = policy.state_shape_per_env
        states = None if shape is None else torch.zeros(T, shape[0], 2, n, shape[2])
        episodes: dict[str, list] = {"return": [], "length": [], "success": []}
        term_sums: dict[str, float] = {}
        obs, starts, state = self.obs, self.starts, self.state
        twin = numpy_rollout_policy(policy, snapshot=True)  # the runner's collection path, step for step
        low, high = policy.action_low.numpy(), policy.action_high.numpy()
        for t in range(T):
            action, log_prob, value, out, start_state, state = policy_step(
                policy, twin, obs, state, starts.numpy(), self.generator
            )
            if start_state is not None:
                states[t] = start_state
            env_action = action if policy.discrete else np.minimum(np.maximum(action, low), high)
            obs_buf[t] = obs
            obs, reward, term, trunc, info = venv.step(env_action)
            actions[t], log_probs[t], values[t], outs[t], starts_buf[t] = action, log_prob, value, out, starts
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            if trunc.any():
                idx = torch.from_numpy(np.nonzero(trunc)[0])
                final_obs = torch.from_numpy(info["final_obs"][idx.numpy()])
                sub_state = None if state is None else state[:, :, idx]
                with torch.no_grad():
                    final_values[t, idx] = policy.value_only(final_obs, sub_state)
            done = term | trunc
            record_episodes(info, done, episodes)
            for name, vals in info.get("reward_terms", {}).items():
                term_sums[name] = term_sums.get(name, 0.0) + float(np.mean(vals))
            starts = torch.from_numpy(done)
        with torch.no_grad():
            if state is not None:
                state = state * (~starts).float().view(1, 1, -1, 1)
            last_values = policy.value_only(torch.from_numpy(obs), state)
        self.obs, self.starts, self.state = obs, starts, state
        t2 = time.perf_counter()
        return {
            "obs": obs_buf, "actions": actions, "log_probs": log_probs, "values": values,
            "rewards": rewards, "final_values": final_values.numpy(), "terminated": terminated,
            "truncated": truncated, "starts": starts_buf.numpy(), "out": outs,
            "states": None if states is None else states.numpy(), "last_values": last_values.numpy(),
            "episodes": episodes, "term_sums": term_sums, "load_s": t1 - t0, "rollout_s": t2 - t1,
            "node_id": _node_id(), "pid": os.getpid(),
        }

    def close(self) -> None:
        self.venv.close()


def _nbytes(value: Any) -> int:
    """Bytes of the numpy arrays in a (nested) worker result: what crosses the network per iteration."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def worker_info(venv: Any, lo: int, hi: int) -> dict[str, Any]:
    """A worker's placement and spaces, as its ``info()`` reports them to the learner."""
    return {
        "node_id": _node_id(),
        "pid": os.getpid(),
        "lo": lo,
        "hi": hi,
        "observation_space": venv.single_observation_space,
        "action_space": venv.single_action_space,
    }


def _node_id() -> str:
    """The Ray node this process runs on (``?`` outside Ray).

    The node id, not an address: inside a worker, ``ray.util.get_node_ip_address()`` guesses the machine's
    external address instead of the ``--node-ip-address`` the node was started with; the learner maps ids to
    the nodes' own addresses.
    """
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "?"
    except Exception:  # noqa: BLE001 - placement info only; never fail a rollout over it
        return "?"


# ---- connecting to a cluster -------------------------------------------------------------------------------
def connect(d: DistributedConfig, cpus_needed: float, temp_dir: str | None = None) -> bool:
    """``ray.init`` for the config; True if this call started Ray (so :meth:`close` shuts it down).

    ``address: null`` starts a private single-node cluster (``address="local"``, never joining a cluster that
    happens to run on the machine) with at least ``cpus_needed`` CPUs, so the workers can always be placed. It
    binds ``node_ip_address`` if given, else the machine's address; Ray rewrites 127.0.0.1 to that address
    too, so a cluster kept off the network needs another loopback address such as 127.0.0.2 (Linux).

    Authentication is Ray's: ``RAY_AUTH_MODE`` is read when ``ray`` is imported, so set it (and
    ``RAY_AUTH_TOKEN``) before that, identically for every process of the cluster; unset, a new local cluster
    uses token auth with ``~/.ray/auth_token``. ``temp_dir`` (local clusters only) replaces Ray's ``/tmp/ray``
    for sockets and logs; keep it short, socket paths must fit in 107 bytes.
    """
    import ray

    if ray.is_initialized():
        return False
    if d.address is None:
        ray.init(
            address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed)), include_dashboard=False,
            _node_ip_address=d.node_ip_address, log_to_driver=False, _temp_dir=temp_dir,
        )
    else:
        ray.init(address=d.address, _node_ip_address=d.node_ip_address, log_to_driver=False)
    return True


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors that mean "the worker (or its node) is gone", as opposed to an error in our code."""
    from ray import exceptions as rex

    return (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError, rex.ObjectLostError)


# ---- the learner's side --------------------------------------------------------------------------------------
class RayWorkerPool:
    """``distributed.workers`` Ray actors of one worker class, one per env slice, replaced when lost.

    Shared by the on-policy :class:`RayRolloutCollector` and the off-policy
    :class:`~rl_control.distributed.ray_offpolicy.RayTransitionCollector`: connecting, placement, calls with
    lost-worker replacement and the events file. ``worker_cls(cfg, lo, hi, seed, rng_seed)`` must provide
    ``info()`` and ``reset(seed)``.

    Args:
        cfg: The run's config; ``cfg.distributed`` selects the cluster and the number of workers.
        events_path: JSONL file that receives worker placement, loss and replacement events (None: none).
        worker_cls: The plain-Python worker class, wrapped with ``ray.remote`` at actor creation.
    """

    def __init__(self, cfg: RunConfig, events_path: str | Path | None, worker_cls: type) -> None:
        import ray

        self._ray = ray
        self.worker_cls = worker_cls
        self.cfg, self.d = cfg, cfg.distributed
        self.events_path = None if events_path is None else Path(events_path)
        self.slices = split_envs(cfg.env.num_envs, self.d.workers)
        self.num_envs = cfg.env.num_envs
        self._owns_ray = connect(self.d, self.d.workers * self.d.cpus_per_worker)
        self._episode_seed = cfg.seed
        self.generations = [0] * self.d.workers
        self.placement: list[dict[str, Any] | None] = [None] * self.d.workers
        self._node_ips: dict[str, str] = {}
        self.replacements_total = 0
        self.last_timing: dict[str, float] = {}
        self.workers: list[Any] = []
        try:
            self.workers = [self._start(k) for k in range(self.d.workers)]
            infos = self._call_all(lambda w, k: w.info.remote(), replace=False)
        except BaseException:
            self.close()
            raise
        for k, info in enumerate(infos):
            self._placed(k, info)
        # Copies: arrays that come out of Ray's object store are read-only, which torch warns about.
        self.single_observation_space: gym.Space = copy.deepcopy(infos[0]["observation_space"])
        self.single_action_space: gym.Space = copy.deepcopy(infos[0]["action_space"])

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Reset every worker's envs (env i with ``seed + i``); returns the first observations [N, D]."""
        if seed is not None:
            self._episode_seed = seed
        obs = self._call_all(lambda w, k: w.reset.remote(seed))
        return np.concatenate(obs), {}

    def close(self) -> None:
        """End the workers; shut Ray down if this pool started it."""
        ray = self._ray
        for w in self.workers:
            try:
                ray.kill(w)
            except Exception:  # noqa: BLE001 - a worker that is already gone is fine
                pass
        self.workers = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    # ---- workers --------------------------------------------------------------------------------------------
    def _start(self, k: int) -> Any:
        """Start the actor of slot ``k`` (first start or replacement); its envs reset in its constructor."""
        ray, d = self._ray, self.d
        gen = self.generations[k]
        options: dict[str, Any] = {"num_cpus": d.cpus_per_worker, "max_restarts": 0}
        if d.placement == "spread":
            options["scheduling_strategy"] = "SPREAD"
        lo, hi = self.slices[k]
        seed = self._episode_seed + _REPLACEMENT_SEED_STRIDE * gen
        rng_seed = int(np.random.SeedSequence([self.cfg.seed, k, gen]).generate_state(1)[0])
        return ray.remote(self.worker_cls).options(**options).remote(self.cfg, lo, hi, seed, rng_seed)

    def _call_all(self, call: Callable[[Any, int], Any], replace: bool = True) -> list[Any]:
        """``call(worker, k)`` on every worker; results in worker order, lost workers replaced and redone.

        A worker counts as lost on one of :func:`_lost_errors` or when it has not answered within
        ``worker_timeout_s`` of the call. More than ``max_replacements`` losses in one call raise
        ``RuntimeError``; so does any other error (our code failing inside a worker).
        """
        ray, d = self._ray, self.d
        lost_errors = _lost_errors()
        results: list[Any] = [None] * len(self.workers)
        pending: dict[Any, tuple[int, float]] = {}

        def submit(k: int) -> None:
            pending[call(self.workers[k], k)] = (k, time.monotonic() + d.worker_timeout_s)

        for k in range(len(self.workers)):
            submit(k)
        losses = 0
        while pending:
            timeout = max(0.0, min(deadline for _, deadline in pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            failed: list[tuple[int, str]] = []
            if ready:
                k, _ = pending.pop(ready[0])
                try:
                    results[k] = ray.get(ready[0])
                except lost_errors as exc:
                    if getattr(exc, "actor_init_failed", False):
                        raise RuntimeError(f"rollout worker {k} failed to start:\n{exc}") from exc
                    failed.append((k, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
                except ray.exceptions.RayTaskError as exc:
                    raise RuntimeError(f"rollout worker {k} raised:\n{exc}") from exc
            else:
                now = time.monotonic()
                for ref, (k, deadline) in list(pending.items()):
                    if deadline <= now:
                        del pending[ref]
                        failed.append((k, f"no answer within worker_timeout_s={d.worker_timeout_s:g}"))
            for k, reason in failed:
                if not replace:
                    raise RuntimeError(f"rollout worker {k} lost while starting: {reason}")
                losses += 1
                if losses > d.max_replacements:
                    raise RuntimeError(
                        f"{losses} rollout workers lost in one iteration (distributed.max_replacements="
                        f"{d.max_replacements}); last: worker {k}: {reason}"
                    )
                self._replace(k, reason)
                submit(k)
        return results

    def _replace(self, k: int, reason: str) -> None:
        """Kill what is left of worker ``k`` and start a new actor for its slice."""
        ray = self._ray
        old = self.placement[k] or {}
        log.warning("rollout worker %d (node %s, pid %s) lost: %s; starting a replacement",
                    k, old.get("node_ip", "?"), old.get("pid", "?"), reason)
        self._event({"event": "lost", "worker": k, "generation": self.generations[k], "reason": reason,
                     "node_ip": old.get("node_ip"), "pid": old.get("pid")})
        try:
            ray.kill(self.workers[k])
        except Exception:  # noqa: BLE001 - usually already dead
            pass
        self.generations[k] += 1
        self.replacements_total += 1
        self.placement[k] = None
        self.workers[k] = self._start(k)
        self._event({"event": "replaced", "worker": k, "generation": self.generations[k]})

    def _placed(self, k: int, info: dict[str, Any]) -> None:
        """Record where worker ``k`` runs the first time it reports (after each start or replacement)."""
        where = {"node_ip": self._node_ip(info["node_id"]), "pid": info["pid"]}
        if self.placement[k] != where:
            self.placement[k] = where
            lo, hi = self.slices[k]
            self._event({"event": "placed", "worker": k, "generation": self.generations[k], "envs": [lo, hi],
                         **where})

    def _node_ip(self, node_id: str) -> str:
        """The address a node was started with (``ray start --node-ip-address``), from its id."""
        if node_id not in self._node_ips:
            self._node_ips = {n["NodeID"]: n["NodeManagerAddress"] for n in self._ray.nodes()}
        return self._node_ips.get(node_id, "?")

    def _event(self, record: dict[str, Any]) -> None:
        if self.events_path is None:
            return
        self.events_path.parent.mkdir(parents=True, exist_ok=True)
        with self.events_path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


class RayRolloutCollector(RayWorkerPool):
    """Rollout workers on a Ray cluster, standing in for the runner's vector env.

    Args:
        cfg: The run's config; ``cfg.distributed`` selects the cluster and the number of workers.
        events_path: JSONL file that receives worker placement, loss and replacement events (None: none).

    Use: ``collector.attach(policy, reward_scaler)`` once the policy exists, then ``reset(seed)`` and
    ``collect(...)`` per iteration, ``close()`` at the end. ``last_timing`` holds the latest iteration's costs
    (also returned as ``distributed/*`` metrics): ``broadcast_s`` (``ray.put`` of the weights), ``gather_s``
    (submit to last result), ``assemble_s`` (slices into the buffer, reward scaling, GAE), ``worker_max_s``
    (the slowest worker's load + rollout), ``overhead_s`` (all of the collection minus ``worker_max_s``),
    ``load_mean_s`` (workers loading the weights), ``weights_bytes``, ``result_bytes`` (rollout data moved).
    """

    def __init__(self, cfg: RunConfig, events_path: str | Path | None = None) -> None:
        self.policy: ActorCritic | None = None
        self.reward_scaler: RewardScaler | None = None
        super().__init__(cfg, events_path, RolloutWorker)

    # ---- vector-env stand-in --------------------------------------------------------------------------------
    def attach(self, policy: ActorCritic, reward_scaler: RewardScaler | None) -> None:
        """The learner's policy (whose weights are broadcast) and reward scaler (applied on the learner)."""
        self.policy, self.reward_scaler = policy, reward_scaler

    def collect(
        self, buffer: RolloutBuffer, obs: Any, starts: Any, state: Any, episode_stats: dict
    ) -> tuple[Any, Any, Any, dict[str, float]]:
        """One iteration's rollout from all workers into ``buffer``; the signature of ``Runner._collect``.

        ``obs``, ``starts`` and ``state`` live in the workers and are passed through untouched. Returns the
        per-step mean of each reward term plus ``distributed/*`` timings and the replacement count.
        """
        if self.policy is None:
            raise RuntimeError("RayRolloutCollector.collect before attach(policy, reward_scaler)")
        ray, T = self._ray, buffer.T
        t0 = time.perf_counter()
        weights = policy_weights(self.policy)
        weights_ref = ray.put(weights)
        t1 = time.perf_counter()
        replaced_before = self.replacements_total
        results = self._call_all(lambda w, k: w.rollout.remote(weights_ref, T))
        t2 = time.perf_counter()
        term_means = fill_buffer(buffer, self.slices, results, self.cfg, self.reward_scaler, episode_stats)
        for k, r in enumerate(results):
            self._placed(k, r)
        t3 = time.perf_counter()
        worker_s = max(r["load_s"] + r["rollout_s"] for r in results)
        self.last_timing = {
            "broadcast_s": t1 - t0, "gather_s": t2 - t1, "assemble_s": t3 - t2,
            "worker_max_s": worker_s, "worker_rollout_mean_s": float(np.mean([r["rollout_s"] for r in results])),
            "overhead_s": (t3 - t0) - worker_s, "replaced": float(self.replacements_total - replaced_before),
            "load_mean_s": float(np.mean([r["load_s"] for r in results])),
            "weights_bytes": float(sum(v.nbytes for v in weights.values())),
            "result_bytes": float(sum(_nbytes(r) for r in results)),
        }
        metrics = dict(term_means)
        metrics.update({f"distributed/{k}": v for k, v in self.last_timing.items()})
        return obs, starts, state, metrics
