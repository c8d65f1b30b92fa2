"""Step kernels used by the workers of :mod:`sim.vector`: how one slice of envs advances by one step.

A kernel turns actions [n, *A] into a :class:`StepBatch` for the n envs of a slice. The envs keep their
own state (MuJoCo model and data, generators); kernels only replace the per-env ``step`` call, and resets
always go through ``env.reset``, so a kernel can never change what an episode starts from.

- :class:`LoopKernel` works for every env: it calls ``env.step`` on each in turn.
- :class:`HalfCheetahKernel` and :class:`InvertedPendulumKernel` step Gymnasium's ``HalfCheetah-v5`` and
  ``InvertedPendulum-v5`` without their per-env Python step: one loop around ``mj_step`` for the slice,
  then observations, rewards, terminations and the time limit for all envs at once with numpy. They
  reproduce ``gymnasium.make(...)`` exactly (tests compare them), the way EnvPool re-implements the same
  envs in C++. A kernel is picked only for unwrapped envs of its class behind Gymnasium's default
  wrappers; anything else falls back to the loop.

Threads: MuJoCo's Python bindings release the GIL inside ``mj_step``, and a batched kernel spends ~90% of
its time there, so a kernel with ``releases_gil = True`` can step its slice with several threads of one
process. The threads take env indices from one shared counter (work stealing, as EnvPool's thread pool
does): a thread the OS preempts holds up one env, not a fixed share of the batch, which keeps throughput
up on a machine shared with other jobs. Which thread steps an env never changes its numbers.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import gymnasium as gym
import mujoco
import numpy as np


class KernelEnvError(Exception):
    """Env number ``index`` of the slice raised while stepping (the original exception is chained)."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


@dataclass
class StepBatch:
    """One step of n envs, before auto-reset.

    Attributes:
        obs: float32 [n, *O], observation after the step (the final one if the episode ended).
        reward: float64 [n].
        terminated: bool [n].
        truncated: bool [n].
        unstable: bool [n], the env reported diverged physics.
        success: float64 [n], 1/0 where the env reported ``is_success``, NaN elsewhere.
        terms: float64 [K, n], named reward terms in the vector env's order (zeros where not reported).
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    unstable: np.ndarray
    success: np.ndarray
    terms: np.ndarray

    def clear(self) -> StepBatch:
        """Reset every field to its "nothing reported" value (kernels reuse one batch per slice)."""
        self.reward[:] = 0.0
        self.terminated[:] = False
        self.truncated[:] = False
        self.unstable[:] = False
        self.success[:] = np.nan
        self.terms[:] = 0.0
        return self

    @classmethod
    def empty(cls, n: int, obs_shape: tuple[int, ...], num_terms: int) -> StepBatch:
        return cls(
            obs=np.zeros((n, *obs_shape), np.float32),
            reward=np.zeros(n, np.float64),
            terminated=np.zeros(n, bool),
            truncated=np.zeros(n, bool),
            unstable=np.zeros(n, bool),
            success=np.full(n, np.nan),
            terms=np.zeros((num_terms, n), np.float64),
        )


class Kernel(Protocol):
    """Advances a fixed slice of envs by one step."""

    def step(self, actions: np.ndarray) -> StepBatch:
        """actions [n, *A] -> results of the n envs; raises KernelEnvError naming the failing env.

        The returned batch may be reused by the next call: read or copy it before stepping again.
        """
        ...

    def after_reset(self, k: int) -> None:
        """Env k of the slice was just reset through ``env.reset``."""
        ...

    def close(self) -> None:
        """Release threads or other resources (the envs are closed by their owner)."""
        ...


class ThreadTeam:
    """``helpers`` threads that join the calling thread in running ``fn(k)`` for k = 0..n-1.

    Work is taken from one shared counter, so whoever is scheduled does it, and ``map`` returns as soon as
    every item is done: a helper the OS has not woken yet is not waited for (it finds nothing left when it
    runs, or joins the next batch). With ``helpers=0`` the caller does everything.

    The go and done signals are bare locks, not ``Semaphore``/``Event`` (which wrap a lock in a Python-level
    condition): a helper woke in 5 us instead of 8 (p90 6 vs 16 us) here, and a 16-env HalfCheetah step took
    7% less time.
    """

    def __init__(self, helpers: int) -> None:
        self._go = [threading.Lock() for _ in range(helpers)]  # held = "no work yet"; released by map
        for go in self._go:
            go.acquire()
        self._task: Callable[[], None] = lambda: None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, args=(go,), name=f"kernel-helper-{i}", daemon=True)
            for i, go in enumerate(self._go)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, go: threading.Lock) -> None:
        while True:
            go.acquire()
            if self._closed:
                return
            self._task()  # the current batch's drain; a stale one finds its counter exhausted

    def _wake_helpers(self) -> None:
        # Only this (the calling) thread releases; a go still released means that helper has not woken for
        # the previous batch yet, and when it does it runs the current ``_task``.
        for go in self._go:
            if go.locked():
                go.release()

    def map(self, n: int, fn: Callable[[int], None]) -> list[tuple[int, Exception]]:
        """Run ``fn(k)`` for every k in range(n); returns the (k, exception) of items that raised."""
        counter = itertools.count()  # next() on it is atomic under the GIL: each item is taken once
        finished: list[int] = []  # list.append is atomic under the GIL
        errors: list[tuple[int, Exception]] = []
        all_done = threading.Lock()  # released by whoever finishes the last item
        all_done.acquire()

        def drain() -> None:
            for k in counter:
                if k >= n:
                    return
                try:
                    fn(k)
                except Exception as exc:
                    errors.append((k, exc))
                finished.append(k)
                if len(finished) == n:  # whoever finishes the last item sees n (its append came last)
                    all_done.release()

        self._task = drain
        self._wake_helpers()
        drain()
        all_done.acquire()
        return errors

    def close(self) -> None:
        self._closed = True
        self._wake_helpers()
        for thread in self._threads:
            thread.join(timeout=1.0)


class LoopKernel:
    """Calls ``env.step`` for each env of the slice: works for any Gymnasium env.

    Args:
        envs: The slice's envs.
        term_source: Where reward terms come from: "reward_terms" (``info["reward_terms"]`` dict, our
            robot tasks), "info" (numeric ``info["reward_*"]`` entries, Gymnasium envs) or "none".
        term_names: Term names in output order.
    """

    def __init__(self, envs: Sequence[gym.Env], term_source: str, term_names: tuple[str, ...]) -> None:
        self.envs = list(envs)
        self.term_source = term_source
        self.term_index = {name: j for j, name in enumerate(term_names)}
        self._out = StepBatch.empty(len(self.envs), tuple(envs[0].observation_space.shape), len(term_names))
        self._watch = [_gymnasium_mujoco_clock(env) for env in self.envs]

    def step(self, actions: np.ndarray) -> StepBatch:
        # Per-env results go to Python lists and into the batch with one conversion per field, and no
        # clear() of fields that are all rewritten anyway: measured 14 instead of 18 us of bookkeeping
        # per step of 8 envs, which the runner pays on top of the envs' own step.
        out = self._out  # reused: the caller copies the results out before the next step
        obs_rows = out.obs
        rewards, terminated, truncated, infos = [], [], [], []
        for k, (env, watch) in enumerate(zip(self.envs, self._watch, strict=True)):
            try:
                before = watch[0].time if watch is not None else 0.0
                obs, reward, term, trunc, info = env.step(actions[k])
                obs_rows[k] = obs
            except Exception as exc:
                raise KernelEnvError(k) from exc
            if watch is not None and watch[0].time - before < watch[1]:
                obs_rows[k] = np.nan  # MuJoCo reset the env by itself: diverged (see _gymnasium_mujoco_clock)
            rewards.append(reward)
            terminated.append(term)
            truncated.append(trunc)
            infos.append(info)
        try:
            out.reward[:] = rewards
        except (ValueError, TypeError):  # e.g. 1-element array rewards: store one by one as before
            for k, reward in enumerate(rewards):
                out.reward[k] = reward
        out.terminated[:] = terminated
        out.truncated[:] = truncated
        out.unstable[:] = [bool(info.get("physics_unstable", False)) for info in infos]
        out.success[:] = [_success(info) for info in infos]
        if self.term_index:
            if self.term_source == "reward_terms":
                dicts = [info.get("reward_terms", {}) for info in infos]
            elif self.term_source == "info":
                dicts = infos
            else:
                dicts = [{} for _ in infos]
            out.terms[:] = [[d.get(name, 0.0) for d in dicts] for name in self.term_index]
        return out

    def after_reset(self, k: int) -> None:
        del k  # env.step keeps its own time limit

    def close(self) -> None:
        pass


def _gymnasium_mujoco_clock(env: gym.Env) -> tuple[mujoco.MjData, float] | None:
    """(MjData, half a step in s) of a Gymnasium MuJoCo env, to spot resets MuJoCo makes by itself, or None.

    When a state or acceleration goes bad (NaN, or beyond 1e10) MuJoCo resets the data to the initial state
    and only leaves a warning; a Gymnasium env then carries on from there as if nothing happened. Such a step
    does not advance the time by a whole step, and its observation is made non-finite so that the vector
    env cuts the episode as diverged. Our own tasks check the warnings themselves (``physics_unstable``).
    """
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # pragma: no cover - Gymnasium without its MuJoCo envs
        return None
    raw = env.unwrapped
    if not isinstance(raw, MujocoEnv):
        return None
    return raw.data, 0.5 * float(raw.dt)


def _success(info: dict) -> float:
    """``info["is_success"]`` as 1.0/0.0, NaN when the env does not say."""
    success = info.get("is_success")
    return np.nan if success is None else float(success)


# Wrappers that gymnasium.make adds and that change nothing a kernel would compute differently.
_PASSIVE_WRAPPERS = ("TimeLimit", "OrderEnforcing", "PassiveEnvChecker")


def _wrapper_chain(env: gym.Env) -> tuple[list[str], int | None]:
    """Names of the wrapper classes around ``env`` and the TimeLimit's max steps (None if absent)."""
    names, max_steps = [], None
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        if isinstance(env, gym.wrappers.TimeLimit):
            max_steps = env._max_episode_steps
        env = env.env
    return names, max_steps


class _BatchedMujocoKernel:
    """Shared machinery of kernels that re-implement one Gymnasium MuJoCo env class for a whole slice.

    Per step: each env's ``ctrl = action`` and ``frame_skip`` calls of ``mj_step`` (one loop over the slice,
    shared by the team's threads), qpos ++ qvel of every env into one array, then the subclass's vectorized
    ``_finish`` computes observations, rewards and terminations as Gymnasium's ``step`` does; truncation
    is the ``TimeLimit``'s step count. Gymnasium also calls ``mj_rnePostConstraint`` after each step; it only
    refreshes derived force quantities (``cfrc_ext`` ...) that these envs' observations and rewards do not
    read and that the vector env never exposes, so kernels skip it (one GIL round trip less per env).

    Subclasses set ``env_class`` (a callable returning the Gymnasium class, imported lazily),
    ``term_names``, ``releases_gil``, and implement ``_settings(raw)`` (the attributes all envs of a slice
    must share) and ``_finish``.
    """

    term_names: ClassVar[tuple[str, ...]] = ()
    releases_gil: ClassVar[bool] = False

    @staticmethod
    def env_class() -> type:
        raise NotImplementedError

    @classmethod
    def _settings(cls, raw: gym.Env) -> tuple:
        return (raw.frame_skip,)

    @classmethod
    def accepts(cls, envs: Sequence[gym.Env]) -> bool:
        try:
            env_class = cls.env_class()
        except ImportError:  # pragma: no cover - the env moved in a future Gymnasium
            return False
        keys = set()
        for env in envs:
            raw = env.unwrapped
            names, _ = _wrapper_chain(env)
            if type(raw) is not env_class or raw.render_mode is not None:
                return False
            if any(name not in _PASSIVE_WRAPPERS for name in names):
                return False
            keys.add(cls._settings(raw))
        return len(keys) == 1

    def __init__(self, envs: Sequence[gym.Env], threads: int = 1) -> None:
        raws = [env.unwrapped for env in envs]
        self.models = [raw.model for raw in raws]
        self.datas = [raw.data for raw in raws]
        self.first = raws[0]
        self.frame_skip = int(self.first.frame_skip)
        self.dt = float(self.first.dt)
        limits = [_wrapper_chain(env)[1] for env in envs]
        self.max_steps = np.array([lim if lim is not None else np.iinfo(np.int64).max for lim in limits])
        n, nq, nv = len(envs), self.first.model.nq, self.first.model.nv
        self.elapsed = np.zeros(n, np.int64)
        # time ++ qpos ++ qvel of every env after its latest step or reset, one mj_getState call per env
        # (as cheap as copying qpos and qvel); the time shows a reset MuJoCo made by itself (see step).
        self._state = np.zeros((n, 1 + nq + nv))
        self._rows = list(self._state)  # row views, made once
        self._spec = int(mujoco.mjtState.mjSTATE_TIME | mujoco.mjtState.mjSTATE_QPOS | mujoco.mjtState.mjSTATE_QVEL)
        self._half_step = 0.5 * self.dt
        self._out = StepBatch.empty(n, tuple(envs[0].observation_space.shape), len(self.term_names))
        # MjData array attributes are views of fixed buffers; fetching them once saves a wrapper per step.
        self._ctrl = [d.ctrl for d in self.datas]
        for k in range(n):
            self._read_state(k)
        self.threads = max(1, min(threads, n))
        self._team = ThreadTeam(self.threads - 1)

    def step(self, actions: np.ndarray) -> StepBatch:
        state = self._state
        before = state.copy()
        step, models, datas, fs = mujoco.mj_step, self.models, self.datas, self.frame_skip
        ctrl, rows, get_state, spec = self._ctrl, self._rows, mujoco.mj_getState, self._spec

        def step_env(k: int) -> None:
            ctrl[k][:] = actions[k]
            step(models[k], datas[k], fs)  # releases the GIL: other threads step other envs meanwhile
            get_state(models[k], datas[k], rows[k], spec)

        if self.threads == 1:  # no team round trip for a one-thread slice
            for k in range(len(datas)):
                try:
                    step_env(k)
                except Exception as exc:
                    raise KernelEnvError(k) from exc
        else:
            errors = self._team.map(len(datas), step_env)
            if errors:
                k, exc = min(errors, key=lambda e: e[0])
                raise KernelEnvError(k) from exc
        self.elapsed += 1
        out = self._out.clear()  # reused: the caller copies the results out before the next step
        self._finish(actions, before[:, 1:], state[:, 1:], out)
        out.truncated[:] = self.elapsed >= self.max_steps
        advanced = state[:, 0] - before[:, 0]
        if advanced.min() < self._half_step:
            # MuJoCo resets an env's data by itself (time back to 0, a warning left behind) when its state or
            # acceleration goes bad (NaN, or beyond 1e10): a step that did not advance the time by a whole
            # step diverged. Its observation is made non-finite, so the vector env's non-finite guard cuts the
            # episode (truncated, physics_unstable, the last good observation, reward 0) and resets the env.
            out.obs[advanced < self._half_step] = np.nan
        return out

    def _finish(self, actions: np.ndarray, before: np.ndarray, state: np.ndarray, out: StepBatch) -> None:
        """Fill ``out``'s obs, reward, terminated and terms from the states (qpos ++ qvel) before and after."""
        raise NotImplementedError

    def after_reset(self, k: int) -> None:
        self.elapsed[k] = 0
        self._read_state(k)

    def close(self) -> None:
        self._team.close()

    def _read_state(self, k: int) -> None:
        mujoco.mj_getState(self.models[k], self.datas[k], self._rows[k], self._spec)


class HalfCheetahKernel(_BatchedMujocoKernel):
    """Gymnasium's HalfCheetah-v5 (``HalfCheetahEnv.step``), the same numbers as ``env.step``.

    obs = qpos[1:] ++ qvel; reward = forward_weight * dx/dt - ctrl_weight * sum(action^2) (the sum in the
    action's float32, as Gymnasium computes it); never terminates.
    """

    term_names: ClassVar[tuple[str, ...]] = ("reward_forward", "reward_ctrl")
    releases_gil: ClassVar[bool] = True  # mj_step of 5 frames (~30 us) per env: worth threads

    @staticmethod
    def env_class() -> type:
        from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

        return HalfCheetahEnv

    @classmethod
    def _settings(cls, raw: gym.Env) -> tuple:
        return (
            raw.frame_skip,
            raw._forward_reward_weight,
            raw._ctrl_cost_weight,
            raw._exclude_current_positions_from_observation,
        )

    def __init__(self, envs: Sequence[gym.Env], threads: int = 1) -> None:
        super().__init__(envs, threads)
        self.forward_weight = float(self.first._forward_reward_weight)
        self.ctrl_weight = float(self.first._ctrl_cost_weight)
        self.skip = 1 if self.first._exclude_current_positions_from_observation else 0

    def _finish(self, actions: np.ndarray, before: np.ndarray, state: np.ndarray, out: StepBatch) -> None:
        forward = self.forward_weight * (state[:, 0] - before[:, 0]) / self.dt
        # Gymnasium: ctrl_weight * np.sum(np.square(action)) with a float32 action stays float32 (NEP 50).
        sq_sum = np.square(actions).sum(axis=1)
        ctrl_cost = (sq_sum * sq_sum.dtype.type(self.ctrl_weight)).astype(np.float64)
        out.obs[:] = state[:, self.skip :]  # state is qpos ++ qvel: obs drops the first `skip` entries
        out.reward[:] = forward - ctrl_cost
        out.terms[0] = forward
        out.terms[1] = -ctrl_cost


class InvertedPendulumKernel(_BatchedMujocoKernel):
    """Gymnasium's InvertedPendulum-v5 (``InvertedPendulumEnv.step``), the same numbers as ``env.step``.

    obs = qpos ++ qvel; terminated when obs is not finite or the pole angle |qpos[1]| exceeds 0.2;
    reward = reward_survive = 1 unless terminated. Its two frames of a 2-joint model take ~3 us, less
    than a thread hand-off, so the slice is stepped by one thread (``releases_gil = False``).
    """

    term_names: ClassVar[tuple[str, ...]] = ("reward_survive",)
    releases_gil: ClassVar[bool] = False

    @staticmethod
    def env_class() -> type:
        from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv

        return InvertedPendulumEnv

    def _finish(self, actions: np.ndarray, before: np.ndarray, state: np.ndarray, out: StepBatch) -> None:
        del actions, before
        with np.errstate(invalid="ignore"):  # a NaN angle compares False; the isfinite test catches it
            terminated = ~np.isfinite(state).all(axis=1) | (np.abs(state[:, 1]) > 0.2)
        out.obs[:] = state
        out.reward[:] = ~terminated
        out.terminated[:] = terminated
        out.terms[0] = out.reward


KERNELS: tuple[type, ...] = (HalfCheetahKernel, InvertedPendulumKernel)
"""Batched kernels, tried in order; each has ``accepts(envs)``, ``term_names`` and ``releases_gil``."""


def kernel_class(envs: Sequence[gym.Env], term_names: tuple[str, ...]) -> type | None:
    """The batched kernel class that reproduces ``envs`` (same reward-term names), or None."""
    for kernel_cls in KERNELS:
        if kernel_cls.term_names == term_names and kernel_cls.accepts(envs):
            return kernel_cls
    return None


def find_kernel(envs: Sequence[gym.Env], term_names: tuple[str, ...], threads: int = 1) -> Kernel | None:
    """A batched kernel for ``envs`` stepping with up to ``threads`` threads, or None if none applies."""
    kernel_cls = kernel_class(envs, term_names)
    if kernel_cls is None:
        return None
    return kernel_cls(envs, threads=threads if kernel_cls.releases_gil else 1)
