"""Parallel vector env: worker processes step slices of the envs; results live in shared memory.

``ParallelVectorEnv`` implements Gymnasium's ``VectorEnv`` API (``num_envs``, ``single_observation_space``,
``single_action_space``, ``observation_space``, ``action_space``, ``reset``, ``step``, ``close``). Each of
``workers`` processes owns a contiguous slice of the envs and steps it in a loop; with ``caller_steps`` the
calling process steps the first slice as well; with ``workers=0`` the same code steps every env in the
calling process (same results, no processes; used by tests and small runs).

Contract (N = ``num_envs``, O = observation shape, usually ``(obs_dim,)``, A = action shape):

``reset(seed=None, options=None) -> (obs, infos)``
    obs: float32 [N, *O]. ``seed=s`` seeds env i with ``s + i`` (a list gives one seed per env); ``None``
    continues each env's generator, except that the first reset uses the constructor's ``seed`` if one
    was given. infos: ``{"randomization": {name: float64 [N]}}`` when the envs report sampled dynamics.
``step(actions [N, *A]) -> (obs, rewards, terminated, truncated, infos)``
    obs: float32 [N, *O]; rewards: float32 [N]; terminated, truncated: bool [N], never merged.
    Same-step auto-reset: when env i's episode ends in this call, ``obs[i]`` is already the first
    observation of its next episode, and infos hold what the ended episode left behind:

    ``infos["final_obs"]``        float32 [N, *O], the real final observation where an episode ended this
                                  step (use it to bootstrap truncated episodes), zeros elsewhere;
    ``infos["_final_obs"]``       bool [N], ``terminated | truncated``;
    ``infos["episode_return"]``   float64 [N], undiscounted return of the ended episode (0 elsewhere);
    ``infos["episode_length"]``   int64 [N], steps of the ended episode (0 elsewhere);
    ``infos["is_success"]``       float64 [N], 1.0/0.0 where an episode ended and the env says,
                                  NaN elsewhere or unknown;
    ``infos["reward_terms"]``     {name: float32 [N]}, every named reward term of this step (our robot
                                  tasks' ``info["reward_terms"]``; for Gymnasium envs the numeric
                                  ``info["reward_*"]`` entries);
    ``infos["physics_unstable"]`` bool [N], the episode was cut because the physics diverged;
    ``infos["randomization"]``    {name: float64 [N]}, dynamics sampled for envs reset this step (NaN
                                  elsewhere); only present when the envs report them.

    The vector env accumulates episode returns and lengths itself. Actions are checked before anything is
    sent to a worker: a wrong shape or a NaN/inf entry raises ``ValueError`` naming the envs.

Guarantees: a NaN observation never reaches the caller (our tasks truncate with
``info["physics_unstable"]`` themselves; for any other env a non-finite observation or reward is turned
into a truncation with the last finite observation as ``final_obs``, reward 0 and ``physics_unstable``).
The same seed gives the same results whatever the number of workers. A worker that dies, raises or stops
answering within ``timeout`` seconds makes the call raise ``RuntimeError`` naming its env indices; the
vector env is then closed (all workers ended), never left hanging.

Design notes:
- Processes come from the ``fork`` context by default: the env factories are arbitrary closures (our
  ``sim.tasks.env_factory`` returns a lambda) that ``fork`` hands over without pickling, and a worker starts
  in milliseconds instead of re-importing MuJoCo and Gymnasium. Workers touch only numpy and MuJoCo, never
  torch's thread pools, which is what makes forking a threaded training process unsafe in general. Pass
  ``context="forkserver"`` (factories then travel through cloudpickle) when the parent holds threads of
  its own that a child might need, e.g. rclpy executors.
- Shared memory is one ``RawArray``: its backing file in /dev/shm is unlinked the moment it is created, so
  nothing can leak even if this process is killed with SIGKILL. Workers also exit on their own when their
  parent disappears (pipe EOF, or re-parenting noticed while idle), so no orphan outlives a crash.
- One pipe message per worker and batch (command out, 1-byte answer back); the parent waits on all pipes
  and all process sentinels with one ``poll`` call, so a dead worker is noticed at once.
- Where a batched kernel exists for the env type (``sim.vector_kernels``), a slice is stepped with one
  Python loop around ``mj_step`` and observations and rewards come from vectorized numpy; other envs are
  stepped one by one through ``env.step``. Both give the same numbers (tested).
- Caller slice (``caller_steps``, the default with more than one core): the calling process steps the
  first slice itself after sending the step command to the workers, instead of sleeping until they
  answer. While every stepping process has a core of its own, a worker polls its pipe for the next
  command for up to ``SPIN_S`` after answering, and the caller polls for the answers for as long, before
  either sleeps: on the 2-vCPU VM this was measured on, a sleeping thread took ~29 us (median) to run
  again after being woken, which a sleeping caller and sleeping workers paid twice per step. Measured with
  2 cores at 2-64 envs (docs/benchmarks.md): HalfCheetah-v5 1.0-1.5x the env-steps/s of in-process kernel
  threads (the previous default for it), our robot tasks 1.0-1.8x that of one worker per core with a
  waiting caller; the gain is largest with few envs, where a step is short next to two wake-ups.
- Kernels whose work is ``mj_step`` (which releases the GIL) can also run on threads (``workers=0``,
  ``threads``): one thread per core taking envs from a shared counter, so a thread the OS preempts holds
  up one env, not a fixed slice. They were the default for such envs until the caller slice measured
  faster: a thread waiting for the GIL or for work sleeps in the kernel, so threads cannot poll the way
  processes do. Envs whose step is mostly Python would serialize on the GIL in threads.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing as mp
import os
import pickle
import select
import signal
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np

from sim.vector_kernels import KernelEnvError, LoopKernel, StepBatch, find_kernel, kernel_class

EnvFn = Callable[[], gym.Env]
StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]
"""(obs [N, *O] float32, rewards [N] float32, terminated [N] bool, truncated [N] bool, infos)."""

# Pipe protocol: each command and each answer starts with one raw status byte (os.read/os.write of 1 byte:
# the step round trip, the hot path, needs nothing else); a reset command, an error answer and the start-up
# answer follow it with one framed message (Connection.send_bytes: pickled payload or text).
_OK = b"k"
_ERR = b"e"
_STEP = b"s"
_RESET = b"r"
_CLOSE = b"c"
_IDLE_CHECK_S = 1.0  # how often an idle worker checks that its parent still exists
SPIN_S = 1e-3
"""With ``caller_steps``: how long a worker polls for its next command, and the caller for the workers'
answers, before sleeping (see "Caller slice" in the module docstring)."""


class EnvStepError(RuntimeError):
    """An env raised inside the vector env (in a worker or in-process); names the env and the phase."""


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to know about the batch layout (small and picklable)."""

    num_envs: int
    obs_shape: tuple[int, ...]
    act_shape: tuple[int, ...]
    act_dtype: str
    term_source: str  # "reward_terms" (our tasks), "info" (numeric info["reward_*"]) or "none"
    term_names: tuple[str, ...]
    rand_names: tuple[str, ...]
    batch_kernels: bool
    threads: int  # threads per slice for kernels that release the GIL

    def fields(self) -> list[tuple[str, str, tuple[int, ...]]]:
        n, k, r = self.num_envs, len(self.term_names), len(self.rand_names)
        return [
            ("actions", self.act_dtype, (n, *self.act_shape)),
            ("obs", "float32", (n, *self.obs_shape)),
            ("final_obs", "float32", (n, *self.obs_shape)),
            ("rewards", "float32", (n,)),
            ("terminated", "bool", (n,)),
            ("truncated", "bool", (n,)),
            ("episode_return", "float64", (n,)),
            ("episode_length", "int64", (n,)),
            ("is_success", "float64", (n,)),
            ("physics_unstable", "bool", (n,)),
            ("reward_terms", "float32", (k, n)),
            ("randomization", "float64", (r, n)),
        ]

    def nbytes(self) -> int:
        return sum(_aligned(_size(dt, shape)) for _, dt, shape in self.fields())


def _size(dtype: str, shape: tuple[int, ...]) -> int:
    return int(np.dtype(dtype).itemsize * np.prod(shape, dtype=np.int64))


def _aligned(nbytes: int) -> int:
    return (nbytes + 63) // 64 * 64  # cache-line alignment keeps every array's start aligned


class _Buffers:
    """Numpy views of the shared block, one attribute per field of ``_Spec.fields()``."""

    actions: np.ndarray
    obs: np.ndarray
    final_obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray
    is_success: np.ndarray
    physics_unstable: np.ndarray
    reward_terms: np.ndarray
    randomization: np.ndarray

    def __init__(self, raw: Any, spec: _Spec) -> None:
        block = np.frombuffer(raw, dtype=np.uint8)
        offset = 0
        for name, dtype, shape in spec.fields():
            size = _size(dtype, shape)
            setattr(self, name, block[offset : offset + size].view(dtype).reshape(shape))
            offset += _aligned(size)


class _SliceRunner:
    """Steps envs ``[lo, hi)`` and writes their results into the shared buffers.

    The same class runs inside each worker process and, with ``workers=0``, in the caller's process, which is
    why both modes give identical results.
    """

    def __init__(self, env_fns: Sequence[EnvFn], lo: int, bufs: _Buffers, spec: _Spec) -> None:
        self.lo, self.hi = lo, lo + len(env_fns)
        self.bufs, self.spec = bufs, spec
        self.envs: list[gym.Env] = []
        for k, fn in enumerate(env_fns):
            try:
                env = fn()
            except Exception as exc:
                raise _env_failure(lo + k, "construction", exc) from exc
            _check_spaces(env, spec, lo + k)
            self.envs.append(env)
        kernel = find_kernel(self.envs, spec.term_names, spec.threads) if spec.batch_kernels else None
        if kernel is None:
            kernel = LoopKernel(self.envs, spec.term_source, spec.term_names)
        self.kernel = kernel
        n = len(self.envs)
        self._return = np.zeros(n, np.float64)
        self._length = np.zeros(n, np.int64)
        self._last_obs = np.zeros((n, *spec.obs_shape), np.float32)  # last finite observation per env
        self._step_outputs_dirty = True

    def reset(self, seeds: Sequence[int | None], options: dict | None) -> None:
        b, lo, hi = self.bufs, self.lo, self.hi
        self._clear_step_outputs()
        for k, env in enumerate(self.envs):
            try:
                obs, info = env.reset(seed=seeds[k], options=options)
            except Exception as exc:
                raise _env_failure(lo + k, "reset", exc) from exc
            self._start_episode(k, obs, info)
        b.terminated[lo:hi] = False
        b.truncated[lo:hi] = False
        b.rewards[lo:hi] = 0.0

    def step(self) -> None:
        b, lo, hi = self.bufs, self.lo, self.hi
        actions = b.actions[lo:hi].copy()  # private copy: an env may keep a reference to its action
        self._clear_step_outputs()
        try:
            out = self.kernel.step(actions)
        except KernelEnvError as exc:
            raise _env_failure(lo + exc.index, "step", exc.__cause__ or exc) from exc
        self._guard_non_finite(out)
        b.obs[lo:hi] = out.obs
        b.rewards[lo:hi] = out.reward
        b.terminated[lo:hi] = out.terminated
        b.truncated[lo:hi] = out.truncated
        b.physics_unstable[lo:hi] = out.unstable
        if out.terms.shape[0]:
            b.reward_terms[:, lo:hi] = out.terms
        self._return += out.reward
        self._length += 1
        self._last_obs[:] = out.obs
        done = (out.terminated | out.truncated).nonzero()[0]  # ndarray.nonzero: no Python-level wrapper
        if done.size:
            self._step_outputs_dirty = True
            for k in done:
                i = lo + k
                b.final_obs[i] = out.obs[k]
                b.episode_return[i] = self._return[k]
                b.episode_length[i] = self._length[k]
                b.is_success[i] = out.success[k]
                try:
                    obs, info = self.envs[k].reset()  # no seed: the env's generator continues
                except Exception as exc:
                    raise _env_failure(i, "auto-reset", exc) from exc
                self._start_episode(k, obs, info)

    def close(self) -> None:
        self.kernel.close()
        for env in self.envs:
            try:
                env.close()
            except Exception:  # noqa: S110 - closing is best effort; the process is going away
                pass

    # ---- internals -------------------------------------------------------------------------------
    def _start_episode(self, k: int, obs: np.ndarray, info: dict) -> None:
        i = self.lo + k
        obs32 = np.asarray(obs, dtype=np.float32)
        if not all_finite(obs32):
            raise EnvStepError(f"env {i}: reset returned a non-finite observation: {obs32}")
        self.kernel.after_reset(k)
        self.bufs.obs[i] = obs32
        self._last_obs[k] = obs32
        self._return[k] = 0.0
        self._length[k] = 0
        if self.spec.rand_names:
            sampled = info.get("randomization", {})
            for j, name in enumerate(self.spec.rand_names):
                self.bufs.randomization[j, i] = float(sampled.get(name, np.nan))
            self._step_outputs_dirty = True

    def _clear_step_outputs(self) -> None:
        # Rows of envs whose episode did not end must read as zeros / NaN; only rewrite after a step
        # that wrote something there (most steps end no episode).
        if not self._step_outputs_dirty:
            return
        b, lo, hi = self.bufs, self.lo, self.hi
        b.final_obs[lo:hi] = 0.0
        b.episode_return[lo:hi] = 0.0
        b.episode_length[lo:hi] = 0
        b.is_success[lo:hi] = np.nan
        b.randomization[:, lo:hi] = np.nan
        self._step_outputs_dirty = False

    def _guard_non_finite(self, out: StepBatch) -> None:
        """A diverged env ends its episode as truncated; its last finite observation stands in."""
        if all_finite(out.obs) and all_finite(out.reward):
            return
        flat = out.obs.reshape(len(out.obs), -1)
        bad = ~(np.isfinite(flat).all(axis=1) & np.isfinite(out.reward))
        if bad.any():
            out.obs[bad] = self._last_obs[bad]
            out.reward[bad] = 0.0
            out.terms[:, bad] = 0.0
            out.terminated[bad] = False
            out.truncated[bad] = True
            out.unstable[bad] = True


def all_finite(x: np.ndarray) -> bool:
    """Whether every entry of ``x`` is finite (no NaN, no +-inf).

    Float arrays: the dot product of the flat array with zeros is 0 if every entry is finite and NaN
    otherwise (0 * inf and 0 * NaN are NaN; nothing can overflow). ~0.5 us on the vector env's small
    arrays, where ``np.isfinite(x).all()`` or a ``sum`` costs 2-5 us in numpy's Python-level wrappers,
    and the check runs several times per step.
    """
    if x.dtype.kind == "f":
        flat = x.reshape(-1)
        return math.isfinite(flat.dot(np.zeros(flat.size, flat.dtype)))
    if x.dtype.kind in "biu":
        return True
    return bool(np.isfinite(x).all())


def _env_failure(index: int, phase: str, exc: BaseException) -> EnvStepError:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return EnvStepError(f"env {index} raised {type(exc).__name__} during {phase}: {exc}\n{tb}")


def _check_spaces(env: gym.Env, spec: _Spec, index: int) -> None:
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or tuple(obs_space.shape) != spec.obs_shape:
        raise EnvStepError(f"env {index}: observation space {obs_space} differs from env 0's shape {spec.obs_shape}")
    if tuple(act_space.shape or ()) != spec.act_shape:
        raise EnvStepError(f"env {index}: action space {act_space} differs from env 0's {spec.act_shape}")


def _probe(env: gym.Env) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Reset and step one throw-away env to learn the reward-term and randomization names."""
    _, info = env.reset(seed=0)
    rand = info.get("randomization", {})
    rand_names = tuple(k for k, v in rand.items() if _is_number(v)) if isinstance(rand, dict) else ()
    env.action_space.seed(0)
    _, _, _, _, info = env.step(env.action_space.sample())
    terms = info.get("reward_terms")
    if isinstance(terms, dict):
        return "reward_terms", tuple(terms), rand_names
    names = tuple(k for k, v in info.items() if k.startswith("reward_") and _is_number(v))
    return ("info" if names else "none"), names, rand_names


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(num_envs: int) -> int:
    """Processes that step envs: one per usable core, at most one per env.

    0 when that is one (a single env or core): the envs are stepped in-process, since a process of its own
    would add a round trip per step and gain no parallelism.
    """
    workers = min(usable_cores(), num_envs)
    return 0 if workers <= 1 else workers


class ParallelVectorEnv(gym.vector.VectorEnv):
    """Steps ``len(env_fns)`` envs in ``workers`` processes (or in-process with ``workers=0``).

    See the module docstring for the exact contract of ``reset`` and ``step``.

    Args:
        env_fns: One factory per env. Every env must have a Box observation space and the same spaces.
        workers: Worker processes; 0 steps every env in this process; None picks the default below.
            Envs are split into contiguous, near-equal slices.
        seed: Seed of the first ``reset()`` called without one (env i gets ``seed + i``).
        timeout: Seconds a worker may take to answer one command before the call fails.
        context: Multiprocessing start method, "fork" (default) or "forkserver"/"spawn".
        batch_kernels: Use batched kernels where one exists for the env type (False forces env.step).
        threads: Threads per process (per worker, or the caller's with ``workers=0``) for a batched kernel
            that releases the GIL; ignored otherwise. None: the usable cores divided among the processes.
        caller_steps: The calling process steps the first slice itself while ``workers`` processes step
            the others (``workers + 1`` slices); see "Caller slice" in the module docstring. Needs
            ``1 <= workers < num_envs``. None: True when ``workers`` is None too and more than one process
            would step envs (more than one core and env), else False.

    Defaults: one stepping process per core (at most one per env): the caller and one worker process per
    further core (``caller_steps``); a single env, or a single core, steps in-process.
    """

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        workers: int | None = None,
        *,
        seed: int | None = None,
        timeout: float = 60.0,
        context: str = "fork",
        batch_kernels: bool = True,
        threads: int | None = None,
        caller_steps: bool | None = None,
    ) -> None:
        env_fns = list(env_fns)
        if not env_fns:
            raise ValueError("ParallelVectorEnv needs at least one env factory")
        n = len(env_fns)
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.num_envs = n
        self.timeout = float(timeout)
        self._pending_seed = seed
        self._has_reset = False
        self._broken: str | None = None

        probe_env = env_fns[0]()
        try:
            obs_space, act_space = probe_env.observation_space, probe_env.action_space
            if not isinstance(obs_space, gym.spaces.Box):
                raise TypeError(
                    f"ParallelVectorEnv needs a Box observation space, got {obs_space}; "
                    "flatten Dict observations first (gymnasium.wrappers.FlattenObservation)"
                )
            term_source, term_names, rand_names = _probe(probe_env)
            kernel_cls = kernel_class([probe_env], term_names) if batch_kernels else None
        finally:
            probe_env.close()
        threaded = kernel_cls is not None and kernel_cls.releases_gil
        if workers is None:
            per_core = default_workers(n)  # stepping processes, one per core (0: in-process)
            if caller_steps is None:
                caller_steps = per_core >= 2
            if caller_steps:
                workers = max(1, per_core - 1)
            else:
                workers = 0 if threaded else per_core
        workers = int(workers)
        caller_steps = bool(caller_steps)
        if caller_steps and not 1 <= workers < n:
            raise ValueError(f"caller_steps needs workers in [1, num_envs - 1 = {n - 1}], got {workers}")
        if not 0 <= workers <= n:
            raise ValueError(f"workers must be in [0, num_envs={n}], got {workers}")
        processes = workers + 1 if caller_steps else max(1, workers)
        if threads is None:
            threads = max(1, usable_cores() // processes) if threaded else 1
        self.num_workers = workers
        self.caller_steps = caller_steps
        self._processes = processes
        self.threads = int(threads) if threaded else 1
        self.single_observation_space = gym.spaces.Box(
            np.asarray(obs_space.low, np.float32), np.asarray(obs_space.high, np.float32), dtype=np.float32
        )
        self.single_action_space = act_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, n)
        self.action_space = gym.vector.utils.batch_space(act_space, n)
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.reward_term_names = term_names
        self._spec = _Spec(
            num_envs=n,
            obs_shape=tuple(obs_space.shape),
            act_shape=tuple(act_space.shape or ()),
            act_dtype=np.dtype(act_space.dtype).str,
            term_source=term_source,
            term_names=term_names,
            rand_names=rand_names,
            batch_kernels=batch_kernels,
            threads=self.threads,
        )
        self._float_actions = np.issubdtype(np.dtype(act_space.dtype), np.floating)
        self._discrete = isinstance(act_space, gym.spaces.Discrete)

        self._procs: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []
        self._slices: list[tuple[int, int]] = []
        self._runner: _SliceRunner | None = None
        self._kernel_names: list[str] = []  # of the workers' slices, as they report them at start-up
        if workers == 0:
            self._raw: Any = bytearray(self._spec.nbytes())
            self._bufs = _Buffers(self._raw, self._spec)
            self._runner = _SliceRunner(env_fns, 0, self._bufs, self._spec)
            self._finalizer = weakref.finalize(self, self._runner.close)
            return

        ctx = mp.get_context(context)
        self._raw = ctx.RawArray(ctypes.c_uint8, self._spec.nbytes())
        self._bufs = _Buffers(self._raw, self._spec)
        sizes = [n // processes + (1 if w < n % processes else 0) for w in range(processes)]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        slices = [(int(bounds[w]), int(bounds[w + 1])) for w in range(processes)]
        # Polling only pays while every stepping process has a core of its own; beyond that it takes time
        # from the processes that are stepping.
        self._spin_s = SPIN_S if caller_steps and processes <= usable_cores() else 0.0
        own = slices.pop(0) if caller_steps else None
        self._slices = slices
        own_runner: list[_SliceRunner] = []  # the caller's slice, built after the workers are forked
        # The finalizer ends the workers (and closes the caller's envs) if this object is dropped or the
        # interpreter exits without close().
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._conns, os.getpid(), own_runner)
        for w, (lo, hi) in enumerate(self._slices):
            parent_conn, child_conn = ctx.Pipe(duplex=True)
            fns: Any = env_fns[lo:hi] if context == "fork" else _Pickled(env_fns[lo:hi])
            # A forked child inherits our ends of the earlier pipes; it closes them so that a worker sees
            # EOF (and exits) when this process dies, instead of waiting on a pipe a sibling keeps open.
            inherited = [*self._conns, parent_conn] if context == "fork" else []
            proc = ctx.Process(
                target=_worker_main,
                args=(child_conn, fns, lo, self._raw, self._spec, inherited, self._spin_s),
                name=f"vecenv-worker-{w}",
                daemon=True,
            )
            proc.start()
            child_conn.close()
            self._procs.append(proc)
            self._conns.append(parent_conn)
        self._poller = select.poll()
        self._fd_owner: dict[int, tuple[int, bool]] = {}
        for w, (proc, conn) in enumerate(zip(self._procs, self._conns, strict=True)):
            self._fd_owner[conn.fileno()] = (w, True)
            self._fd_owner[proc.sentinel] = (w, False)
            self._poller.register(conn.fileno(), select.POLLIN)
            self._poller.register(proc.sentinel, select.POLLIN)
        self._kernel_names = [""] * workers
        if own is not None:
            # Built after the fork, so that no child inherits this slice's kernel threads or envs.
            try:
                self._runner = _SliceRunner(env_fns[own[0] : own[1]], own[0], self._bufs, self._spec)
            except BaseException:
                self._finalizer()
                raise
            own_runner.append(self._runner)
        self._await_all("start-up", self._kernel_names)

    # ---- Gymnasium API ---------------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every env. Returns obs float32 [N, *O] and infos (see the module docstring)."""
        self._check_usable()
        if seed is None and self._pending_seed is not None and not self._has_reset:
            seed = self._pending_seed
        seeds = self._per_env_seeds(seed)
        for (lo, hi), conn in zip(self._slices, self._conns, strict=True):
            self._send(conn, _RESET, pickle.dumps((seeds[lo:hi], options)))
        self._run_slices("reset", lambda r: r.reset(seeds[r.lo : r.hi], options))
        self._has_reset = True
        infos: dict[str, Any] = {}
        if self._spec.rand_names:
            infos["randomization"] = self._randomization()
        return self._bufs.obs.copy(), infos

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env once with ``actions`` [N, *A]; see the module docstring for the outputs."""
        self._check_usable()
        if not self._has_reset:
            raise RuntimeError("call reset() before step()")
        self._bufs.actions[...] = self._validated(actions)
        for conn in self._conns:
            self._send(conn, _STEP)
        self._run_slices("step", _SliceRunner.step)
        return self._collect()

    def close_extras(self, **kwargs: Any) -> None:
        """End the workers (or close the in-process envs); safe to call more than once."""
        self._finalizer()

    def __enter__(self) -> ParallelVectorEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- introspection used by tests and benchmarks ----------------------------------------------
    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    @property
    def parallelism(self) -> int:
        """How many envs are stepped at the same time (stepping processes x threads, at most num_envs)."""
        return max(1, min(self.num_envs, self._processes * self.threads))

    @property
    def kernels(self) -> list[str]:
        """Kernel class stepping each slice (the caller's first, if it steps one), e.g. "LoopKernel"."""
        own = [type(self._runner.kernel).__name__] if self._runner is not None else []
        return own + list(self._kernel_names)

    def envs_of_worker(self, w: int) -> range:
        lo, hi = self._slices[w]
        return range(lo, hi)

    # ---- internals -------------------------------------------------------------------------------
    def _per_env_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        n = self.num_envs
        if seed is None:
            return [None] * n
        if isinstance(seed, int | np.integer):
            return [int(seed) + i for i in range(n)]
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"reset got {len(seeds)} seeds for {n} envs")
        return seeds

    def _validated(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions)
        expected = (self.num_envs, *self._spec.act_shape)
        if a.shape != expected:
            raise ValueError(f"actions have shape {a.shape}, expected {expected} (num_envs, *action_shape)")
        if (self._float_actions or a.dtype.kind == "f") and not all_finite(a):
            finite = np.isfinite(a.reshape(self.num_envs, -1)).all(axis=1)
            if not finite.all():
                bad = np.flatnonzero(~finite).tolist()
                raise ValueError(f"actions of envs {bad} contain NaN or inf: {a[bad[0]]} (env {bad[0]})")
        space = self.single_action_space
        if self._discrete:
            # Casting into the integer buffer would silently truncate 0.7 to 0 or wrap -1: refuse instead.
            ok = (a == np.round(a)) & (a >= space.start) & (a < space.start + space.n)
            if not ok.all():
                bad = np.flatnonzero(~ok).tolist()
                raise ValueError(f"actions of envs {bad} are not in {space}: {a[bad].tolist()}")
        return a

    def _collect(self) -> StepResult:
        b = self._bufs
        terminated, truncated = b.terminated.copy(), b.truncated.copy()
        ended = terminated | truncated
        infos: dict[str, Any] = {
            "final_obs": b.final_obs.copy(),
            "_final_obs": ended,
            "episode_return": b.episode_return.copy(),
            "episode_length": b.episode_length.copy(),
            "is_success": b.is_success.copy(),
            "reward_terms": {name: b.reward_terms[j].copy() for j, name in enumerate(self._spec.term_names)},
            "physics_unstable": b.physics_unstable.copy(),
        }
        if self._spec.rand_names:
            infos["randomization"] = self._randomization()
        return b.obs.copy(), b.rewards.copy(), terminated, truncated, infos

    def _randomization(self) -> dict[str, np.ndarray]:
        return {name: self._bufs.randomization[j].copy() for j, name in enumerate(self._spec.rand_names)}

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise RuntimeError(f"the vector env was closed after a failure: {self._broken}")
        if self.closed:
            raise RuntimeError("the vector env is closed")

    def _run_slices(self, phase: str, fn: Callable[[_SliceRunner], None]) -> None:
        """Run ``fn`` on the caller's slice (if any), then collect every worker's answer to the command
        already sent to it. A failure of the caller's slice wins over the workers' answers."""
        if self._runner is not None:
            try:
                fn(self._runner)
            except EnvStepError as exc:
                self._fail(str(exc), cause=exc)
            except BaseException as exc:  # Ctrl-C, or a bug: not an env's failure
                if self._conns:
                    self._abandon(f"{type(exc).__name__} in the caller's own slice during {phase}")
                raise
        if self._conns:
            self._await_all(phase)

    def _send(self, conn: Connection, command: bytes, payload: bytes | None = None) -> None:
        try:
            os.write(conn.fileno(), command)
            if payload is not None:
                conn.send_bytes(payload)
        except (BrokenPipeError, OSError):
            w = self._conns.index(conn)
            self._fail(self._death_message(w, "sending a command"))

    def _await_all(self, phase: str, payloads: list[str] | None = None) -> None:
        """Wait for one answer from every worker, noticing deaths at once and giving up after timeout.

        ``payloads[w]`` receives the text a worker sent with its OK (the kernel name at start-up); only
        then does an OK carry a payload.
        """
        try:
            self._await_answers(phase, payloads)
        except KeyboardInterrupt:
            self._abandon(f"interrupted while waiting for the workers during {phase}")
            raise

    def _abandon(self, reason: str) -> None:
        # Answers still in flight would pair with the next command: this env cannot be used any more.
        self._broken = reason
        self._finalizer()
        self.closed = True

    def _await_answers(self, phase: str, payloads: list[str] | None) -> None:
        pending = set(range(self.num_workers))
        deadline = time.monotonic() + self.timeout
        spin_until = time.perf_counter() + self._spin_s
        errors: list[str] = []
        while pending:
            events = _poll_until(self._poller, spin_until)
            if not events:
                remaining = deadline - time.monotonic()
                events = self._poller.poll(max(0, int(remaining * 1000))) if remaining > 0 else []
            if not events:
                envs = sorted(i for w in pending for i in self.envs_of_worker(w))
                self._fail(
                    f"workers {sorted(pending)} (envs {_ranges(envs)}) did not answer within "
                    f"{self.timeout:g} s during {phase}"
                )
            for fd, _ in events:
                w, is_conn = self._fd_owner[fd]
                if w not in pending:
                    continue
                conn = self._conns[w]
                if not is_conn and not conn.poll():
                    self._fail(self._death_message(w, phase))
                try:
                    status = os.read(conn.fileno(), 1)
                    if status == _ERR:
                        errors.append(pickle.loads(conn.recv_bytes()))
                    elif status == _OK and payloads is not None:
                        payloads[w] = conn.recv_bytes().decode()
                    elif status != _OK:  # b"": the worker closed its end
                        raise EOFError
                except (EOFError, OSError):
                    self._fail(self._death_message(w, phase))
                pending.discard(w)
        if errors:
            self._fail("\n".join(errors))

    def _death_message(self, w: int, phase: str) -> str:
        proc = self._procs[w]
        proc.join(timeout=0.5)
        code = proc.exitcode
        how = (
            f"was killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0
            else (f"exited with code {code}" if code is not None else "closed its pipe")
        )
        envs = self.envs_of_worker(w)
        return f"worker {w} (pid {proc.pid}, envs {_ranges(list(envs))}) {how} during {phase}"

    def _fail(self, message: str, cause: BaseException | None = None) -> NoReturn:
        self._broken = message.splitlines()[0]
        for proc in self._procs:  # no graceful close after a failure: a hung worker would not answer
            if proc.is_alive():
                proc.terminate()
        self._finalizer()
        self.closed = True
        raise RuntimeError(message) from cause


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5' (env lists in error messages stay short)."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


class _Pickled:
    """Env factories sent through cloudpickle (lambdas and closures) for non-fork start methods."""

    def __init__(self, fns: Sequence[EnvFn]) -> None:
        self.fns = list(fns)

    def __getstate__(self) -> bytes:
        import cloudpickle

        return cloudpickle.dumps(self.fns)

    def __setstate__(self, state: bytes) -> None:
        self.fns = pickle.loads(state)


def _worker_main(
    conn: Connection,
    fns: Sequence[EnvFn] | _Pickled,
    lo: int,
    raw: Any,
    spec: _Spec,
    inherited: list[Connection],
    spin_s: float = 0.0,
) -> None:
    """Loop of one worker process: build the slice's envs, then answer commands until told to close.

    ``spin_s > 0``: after each answer, poll for the next command for up to that long before sleeping.
    """
    # Ctrl-C goes to the whole process group; the parent handles it and closes us in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for c in inherited:
        c.close()
    parent = os.getppid()
    env_fns = fns.fns if isinstance(fns, _Pickled) else fns
    runner: _SliceRunner | None = None
    fd = conn.fileno()
    try:
        runner = _SliceRunner(env_fns, lo, _Buffers(raw, spec), spec)
        os.write(fd, _OK)
        conn.send_bytes(type(runner.kernel).__name__.encode())
        ready = select.poll()  # made once: Connection.poll builds a selector per call (~10 us)
        ready.register(fd, select.POLLIN)
        while True:
            waiting = not _poll_until(ready, time.perf_counter() + spin_s)
            if waiting and not ready.poll(_IDLE_CHECK_S * 1000):
                if os.getppid() != parent:  # the parent died without closing us: do not linger
                    break
                continue
            command = os.read(fd, 1)
            if command in (_CLOSE, b""):  # told to, or the parent closed its end
                break
            try:
                if command == _STEP:
                    runner.step()
                else:
                    seeds, options = pickle.loads(conn.recv_bytes())
                    runner.reset(seeds, options)
            except Exception as exc:
                text = str(exc) if isinstance(exc, EnvStepError) else _worker_failure(lo, len(env_fns), exc)
                os.write(fd, _ERR)
                conn.send_bytes(pickle.dumps(text))
                continue
            os.write(fd, _OK)
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the parent went away; nothing left to answer
    except Exception as exc:  # construction failed: report it, the parent raises
        text = str(exc) if isinstance(exc, EnvStepError) else _worker_failure(lo, len(env_fns), exc)
        try:
            os.write(fd, _ERR)
            conn.send_bytes(pickle.dumps(text))
        except OSError:
            pass
    finally:
        if runner is not None:
            runner.close()
        conn.close()


def _poll_until(poller: select.poll, until: float) -> list[tuple[int, int]]:
    """``poller``'s ready events, polling without sleeping until ``time.perf_counter()`` reaches ``until``
    (at least once); an empty list if nothing became ready by then."""
    events = poller.poll(0)
    while not events and time.perf_counter() < until:
        events = poller.poll(0)
    return events


def _worker_failure(lo: int, n: int, exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"the worker of envs {_ranges(list(range(lo, lo + n)))} raised {type(exc).__name__}: {exc}\n{tb}"


def _shutdown(
    procs: list[mp.process.BaseProcess], conns: list[Connection], owner: int, own: list[_SliceRunner]
) -> None:
    """Ask every worker to exit, then terminate and kill stragglers; leaves no child behind. Closes the
    caller's own slice (``own``, empty unless it steps one) too."""
    if os.getpid() != owner:  # a forked child holding a copy of this object must not touch our workers
        return
    for runner in own:
        runner.close()
    for conn in conns:
        try:
            os.write(conn.fileno(), _CLOSE)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=1.0)
    for conn in conns:
        conn.close()


def make_vector_env(
    task_id: str,
    num_envs: int,
    workers: int | None = None,
    randomization: Any = None,
    seed: int | None = None,
    **kwargs: Any,
) -> ParallelVectorEnv:
    """``num_envs`` copies of ``task_id`` (one of our tasks or any Gymnasium id) in a ParallelVectorEnv.

    Args:
        task_id: Task id understood by :func:`sim.tasks.make_env`.
        num_envs: Number of envs.
        workers: Worker processes (None: ParallelVectorEnv's default layout; 0: in-process).
        randomization: A :class:`sim.randomization.RandomizationConfig`, or None for the task's default.
        seed: Seed of the first reset (env i gets ``seed + i``).
        **kwargs: Passed to :class:`ParallelVectorEnv` (timeout, context, batch_kernels, threads,
            caller_steps).
    """
    from sim.tasks import env_factory

    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fn = env_factory(task_id, randomization)
    return ParallelVectorEnv([fn] * num_envs, workers, seed=seed, **kwargs)
