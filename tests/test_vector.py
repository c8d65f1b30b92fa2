"""Tests of sim.vector.ParallelVectorEnv: the contract the training runner relies on, with real MuJoCo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from sim.randomization import RandomizationConfig
from sim.tasks import make_env
from sim.vector import ParallelVectorEnv, all_finite, make_vector_env
from sim.vector_kernels import ThreadTeam

PENDULUM = "pendulum_swingup"  # 200-step episodes
CHEETAH = "HalfCheetah-v5"  # 1000-step episodes, stepped by the batched kernel
RAND = RandomizationConfig()  # randomization on, so per-env generators matter everywhere


def _actions(space: gym.Space, n: int, steps: int, seed: int = 0) -> np.ndarray:
    """[steps, n, *A] uniform random actions (float32)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (steps, n, *space.shape)).astype(np.float32)


def _rollout(venv: ParallelVectorEnv, actions: np.ndarray, seed: int) -> list:
    """Every output of reset and of each step, for exact comparisons."""
    obs, _ = venv.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, rew, term, trunc, info = venv.step(a)
        out += [
            obs,
            rew,
            term,
            trunc,
            info["final_obs"],
            info["episode_return"],
            info["episode_length"],
            info["is_success"],
            info["physics_unstable"],
            *info["reward_terms"].values(),
        ]
    return out


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


class FlakyEnv(gym.Env):
    """A tiny env that misbehaves on request: NaN observation, exception or a hang at a given step."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, nan_at: int = -1, raise_at: int = -1, hang_at: int = -1) -> None:
        self.nan_at, self.raise_at, self.hang_at = nan_at, raise_at, hang_at
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        if self.t == self.raise_at:
            raise ArithmeticError("deliberate failure")
        if self.t == self.hang_at:
            time.sleep(30)
        obs = np.full(3, float(self.t), np.float32)
        if self.t == self.nan_at:
            obs[1] = np.nan
        return obs, 1.0, False, self.t >= 10, {}


# ---- shapes, dtypes, contract ----------------------------------------------------------------------
def test_shapes_dtypes_and_infos() -> None:
    n = 3
    with make_vector_env(PENDULUM, n, workers=2, randomization=RAND, seed=1) as venv:
        obs_dim = venv.single_observation_space.shape[0]
        assert venv.num_envs == n
        assert venv.observation_space.shape == (n, obs_dim)
        assert venv.action_space.shape == (n, *venv.single_action_space.shape)
        obs, info = venv.reset()
        assert obs.shape == (n, obs_dim) and obs.dtype == np.float32
        assert set(info["randomization"]) >= {"mass_scale", "latency_steps"}
        actions = np.zeros((n, *venv.single_action_space.shape), np.float32)
        obs, rew, term, trunc, info = venv.step(actions)
        assert obs.shape == (n, obs_dim) and obs.dtype == np.float32
        assert rew.shape == (n,) and rew.dtype == np.float32
        assert term.dtype == bool and trunc.dtype == bool and term.shape == trunc.shape == (n,)
        assert info["final_obs"].shape == (n, obs_dim) and info["final_obs"].dtype == np.float32
        assert info["_final_obs"].dtype == bool and not info["_final_obs"].any()
        assert info["episode_return"].dtype == np.float64 and info["episode_length"].dtype == np.int64
        assert np.isnan(info["is_success"]).all()
        assert info["physics_unstable"].dtype == bool
        assert list(info["reward_terms"]) == ["upright", "velocity", "effort"]
        for values in info["reward_terms"].values():
            assert values.shape == (n,) and values.dtype == np.float32
        # The named terms add up to the reward (our tasks' reward is their sum).
        np.testing.assert_allclose(sum(info["reward_terms"].values()), rew, rtol=1e-5, atol=1e-6)
        assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


def test_first_reset_uses_constructor_seed_and_seed_lists() -> None:
    a = make_vector_env(PENDULUM, 2, workers=0, randomization=RAND, seed=5)
    b = make_vector_env(PENDULUM, 2, workers=0, randomization=RAND)
    try:
        np.testing.assert_array_equal(a.reset()[0], b.reset(seed=5)[0])
        np.testing.assert_array_equal(a.reset(seed=[5, 6])[0], b.reset(seed=5)[0])
        with pytest.raises(ValueError, match="3 seeds for 2 envs"):
            a.reset(seed=[1, 2, 3])
    finally:
        a.close()
        b.close()


# ---- auto-reset and final observations ---------------------------------------------------------------
@pytest.mark.parametrize(("task", "randomization", "steps"), [(PENDULUM, RAND, 205), (CHEETAH, None, 1003)])
def test_same_step_autoreset_matches_single_env(task: str, randomization, steps: int) -> None:
    n, seed = 2, 11
    venv = make_vector_env(task, n, workers=0, randomization=randomization)
    singles = [make_env(task, randomization) for _ in range(n)]
    actions = _actions(venv.single_action_space, n, steps)
    ended_seen = 0
    try:
        obs, _ = venv.reset(seed=seed)
        single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
        np.testing.assert_array_equal(obs, np.stack(single_obs).astype(np.float32))
        returns = np.zeros(n)
        for t in range(steps):
            obs, rew, term, trunc, info = venv.step(actions[t])
            for i, env in enumerate(singles):
                s_obs, s_rew, s_term, s_trunc, s_info = env.step(actions[t, i])
                returns[i] += s_rew
                assert rew[i] == np.float32(s_rew)
                assert (term[i], trunc[i]) == (s_term, s_trunc)
                if s_term or s_trunc:
                    ended_seen += 1
                    assert info["_final_obs"][i]
                    np.testing.assert_array_equal(info["final_obs"][i], np.asarray(s_obs, np.float32))
                    assert info["episode_return"][i] == pytest.approx(returns[i], rel=1e-12)
                    assert info["episode_length"][i] == t + 1
                    # Same step: obs[i] already starts the next episode, exactly as reset() continues.
                    s_obs, _ = env.reset()
                    returns[i] = 0.0
                else:
                    assert not info["_final_obs"][i]
                    assert not info["final_obs"][i].any()
                np.testing.assert_array_equal(obs[i], np.asarray(s_obs, np.float32))
    finally:
        venv.close()
        for env in singles:
            env.close()
    assert ended_seen == n  # every env crossed exactly one episode end


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_kernel_equals_env_step(threads: int) -> None:
    """HalfCheetah's batched kernel reproduces Gymnasium's step, term by term, across the time limit."""
    n, steps = 3, 1002
    fast = make_vector_env(CHEETAH, n, workers=0, seed=3, threads=threads)
    slow = make_vector_env(CHEETAH, n, workers=0, seed=3, batch_kernels=False)
    try:
        assert fast.kernels == ["HalfCheetahKernel"] and slow.kernels == ["LoopKernel"]
        assert fast.threads == threads and slow.threads == 1
        actions = _actions(fast.single_action_space, n, steps, seed=1)
        _assert_same(_rollout(fast, actions, 3), _rollout(slow, actions, 3))
    finally:
        fast.close()
        slow.close()


def test_inverted_pendulum_kernel_equals_env_step() -> None:
    """InvertedPendulum's kernel reproduces Gymnasium's step, including its pole-angle termination."""
    n, steps = 4, 300
    fast = make_vector_env("InvertedPendulum-v5", n, workers=0, seed=5)
    slow = make_vector_env("InvertedPendulum-v5", n, workers=0, seed=5, batch_kernels=False)
    try:
        assert fast.kernels == ["InvertedPendulumKernel"] and slow.kernels == ["LoopKernel"]
        assert fast.threads == 1  # two frames of a 2-joint model: not worth a thread hand-off
        # Small pushes keep the pole up for a while, large ones topple it: long and short episodes.
        actions = _actions(fast.single_action_space, n, steps, seed=2) * np.float32(0.3)
        fast_run, slow_run = _rollout(fast, actions, 6), _rollout(slow, actions, 6)
        _assert_same(fast_run, slow_run)
        terminated = np.array(fast_run[3::10])  # the `term` entry of every step
        assert terminated.sum() >= 10  # several episodes ended, so auto-reset after termination is covered
    finally:
        fast.close()
        slow.close()


def test_all_finite_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float16, np.float32, np.float64):
        x = rng.standard_normal((4, 3)).astype(dtype)
        assert all_finite(x) and all_finite(x[:, ::2]) and all_finite(np.zeros((0, 3), dtype))
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[2, 1] = bad
            assert not all_finite(y)
        huge = np.full(3, np.finfo(dtype).max, dtype)  # the sum of squares overflows; entries are finite
        assert all_finite(huge)
    assert all_finite(np.array([1, -5, 7])) and all_finite(np.array([True, False]))


def test_thread_team_runs_every_item_once_and_reports_errors() -> None:
    team = ThreadTeam(helpers=2)
    try:
        for n in (1, 2, 50):
            seen: list[int] = []
            assert team.map(n, seen.append) == []
            assert sorted(seen) == list(range(n))

        def fail_on_3(k: int) -> None:
            if k == 3:
                raise ArithmeticError("item 3")

        errors = team.map(8, fail_on_3)
        assert [(k, str(e)) for k, e in errors] == [(3, "item 3")]
    finally:
        team.close()


# ---- processes, determinism -------------------------------------------------------------------------
def test_in_process_and_workers_identical_and_deterministic() -> None:
    n, steps = 5, 210
    runs = []
    for workers, caller_steps in ((0, False), (2, False), (2, False), (1, True), (2, True)):
        with make_vector_env(PENDULUM, n, workers=workers, randomization=RAND, caller_steps=caller_steps) as venv:
            assert venv.parallelism == workers + caller_steps or workers == 0
            runs.append(_rollout(venv, _actions(venv.single_action_space, n, steps), seed=7))
    for other in runs[1:]:
        _assert_same(runs[0], other)
    with make_vector_env(PENDULUM, n, workers=2, randomization=RAND) as venv:
        other = _rollout(venv, _actions(venv.single_action_space, n, 3), seed=8)
    assert not np.array_equal(other[0], runs[0][0])


def test_default_parallelism() -> None:
    """One stepping process per core: the caller and a worker per further core; kernel threads on request."""
    cores = len(os.sched_getaffinity(0))
    with make_vector_env(CHEETAH, 4, workers=0) as venv:  # a GIL-releasing kernel: threads in-process
        assert (venv.num_workers, venv.threads) == (0, cores)
        assert venv.parallelism == min(4, cores)
    with make_vector_env(CHEETAH, 4) as venv:
        stepping = min(4, cores) if cores > 1 else 1
        assert (venv.num_workers, venv.caller_steps, venv.threads) == (stepping - 1, cores > 1, 1)
    with make_vector_env(PENDULUM, 4) as venv:  # the caller steps one slice, a worker per further core
        stepping = min(4, cores) if cores > 1 else 1
        assert (venv.num_workers, venv.caller_steps, venv.threads) == (stepping - 1, cores > 1, 1)
        assert venv.parallelism == stepping
        if cores > 1:
            assert venv.envs_of_worker(0).start == 4 // stepping  # the caller's slice comes first
    with make_vector_env(PENDULUM, 4, workers=2) as venv:  # explicit workers: the caller only waits
        assert (venv.num_workers, venv.caller_steps, venv.parallelism) == (2, False, 2)
    with make_vector_env(PENDULUM, 1) as venv:
        assert venv.num_workers == 0 and venv.parallelism == 1
    with pytest.raises(ValueError, match=r"caller_steps needs workers in \[1, num_envs - 1 = 3\], got 4"):
        make_vector_env(PENDULUM, 4, workers=4, caller_steps=True)


def test_cheetah_kernel_in_workers_matches_in_process() -> None:
    n, steps = 3, 40
    runs = []
    for workers, caller_steps in ((0, False), (2, False), (1, True)):
        with make_vector_env(CHEETAH, n, workers=workers, caller_steps=caller_steps) as venv:
            assert venv.kernels == ["HalfCheetahKernel"] * max(1, workers + caller_steps)
            runs.append(_rollout(venv, _actions(venv.single_action_space, n, steps), seed=2))
    _assert_same(runs[0], runs[1])
    _assert_same(runs[0], runs[2])


def test_forkserver_context_matches_fork() -> None:
    n, steps = 2, 5
    runs = []
    for context in ("fork", "forkserver"):
        with make_vector_env(PENDULUM, n, workers=2, randomization=RAND, context=context) as venv:
            runs.append(_rollout(venv, _actions(venv.single_action_space, n, steps), seed=4))
    _assert_same(runs[0], runs[1])


# ---- failures: never a hang, always a clear error ---------------------------------------------------
def test_dead_worker_raises_naming_envs() -> None:
    venv = make_vector_env(PENDULUM, 4, workers=2)
    venv.reset(seed=0)
    pids = venv.worker_pids
    os.kill(pids[1], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 1 .*envs 2-3.*SIGKILL"):
        venv.step(np.zeros((4, 1), np.float32))
    assert time.monotonic() - start < 5.0
    assert not any(_alive(pid) for pid in pids)  # the surviving worker was ended too
    with pytest.raises(RuntimeError, match="closed after a failure"):
        venv.step(np.zeros((4, 1), np.float32))
    venv.close()


def test_dead_worker_beside_the_caller_slice_raises_naming_envs() -> None:
    venv = make_vector_env(PENDULUM, 4, workers=1, caller_steps=True)  # caller: envs 0-1, worker 0: envs 2-3
    venv.reset(seed=0)
    pids = venv.worker_pids
    os.kill(pids[0], signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"worker 0 .*envs 2-3.*SIGKILL"):
        venv.step(np.zeros((4, 1), np.float32))
    assert not any(_alive(pid) for pid in pids)
    venv.close()


@pytest.mark.parametrize(
    ("workers", "caller_steps", "bad_env"), [(0, False, 2), (2, False, 2), (1, True, 2), (1, True, 0)]
)
def test_env_exception_raises_naming_env(workers: int, caller_steps: bool, bad_env: int) -> None:
    """With the caller stepping envs 0-1, env 0 fails in this process and env 2 in the worker."""
    fns = [FlakyEnv] * 4
    fns[bad_env] = lambda: FlakyEnv(raise_at=2)
    venv = ParallelVectorEnv(fns, workers=workers, caller_steps=caller_steps)
    venv.reset(seed=0)
    venv.step(np.zeros((4, 2), np.float32))
    with pytest.raises(RuntimeError, match=rf"env {bad_env} raised ArithmeticError during step: deliberate failure"):
        venv.step(np.zeros((4, 2), np.float32))
    assert not any(_alive(pid) for pid in venv.worker_pids)
    venv.close()


class InterruptedEnv(FlakyEnv):
    """Ctrl-C arriving while this env steps (KeyboardInterrupt is not an env failure)."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t == 1:  # the second step after a reset (the vector env probes one step on construction)
            raise KeyboardInterrupt
        return super().step(action)


def test_interrupt_in_the_caller_slice_ends_the_workers() -> None:
    """The workers' answers are in flight when the caller's own slice is interrupted: the env is unusable."""
    venv = ParallelVectorEnv([InterruptedEnv, FlakyEnv, FlakyEnv], workers=1, caller_steps=True)
    venv.reset(seed=0)
    pids = venv.worker_pids
    venv.step(np.zeros((3, 2), np.float32))
    with pytest.raises(KeyboardInterrupt):
        venv.step(np.zeros((3, 2), np.float32))
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed after a failure: KeyboardInterrupt in the caller's own slice"):
        venv.step(np.zeros((3, 2), np.float32))
    venv.close()


def test_hung_worker_times_out() -> None:
    venv = ParallelVectorEnv([FlakyEnv, lambda: FlakyEnv(hang_at=1)], workers=2, timeout=0.5)
    venv.reset(seed=0)
    pids = venv.worker_pids
    start = time.monotonic()
    # Worker 1 hangs; on a very busy machine worker 0 may be late as well, so it may be named too.
    with pytest.raises(RuntimeError, match=r"workers \[(0, )?1\] \(envs (0-)?1\) did not answer within 0.5 s"):
        venv.step(np.zeros((2, 2), np.float32))
    assert time.monotonic() - start < 5.0
    assert not any(_alive(pid) for pid in pids)
    venv.close()


def test_hung_worker_beside_the_caller_slice_times_out() -> None:
    """The caller polls, then sleeps in poll() with the remaining timeout: a hang still ends in an error."""
    venv = ParallelVectorEnv([FlakyEnv, FlakyEnv, lambda: FlakyEnv(hang_at=1)], workers=1, caller_steps=True,
                             timeout=0.5)
    venv.reset(seed=0)
    pids = venv.worker_pids
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"workers \[0\] \(envs 2\) did not answer within 0.5 s during step"):
        venv.step(np.zeros((3, 2), np.float32))
    assert 0.5 <= time.monotonic() - start < 5.0
    assert not any(_alive(pid) for pid in pids)
    venv.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_actions_raise_before_stepping(workers: int) -> None:
    with make_vector_env(PENDULUM, 3, workers=workers) as venv:
        obs, _ = venv.reset(seed=0)
        bad = np.zeros((3, 1), np.float32)
        bad[1, 0] = np.nan
        with pytest.raises(ValueError, match=r"envs \[1\] contain NaN"):
            venv.step(bad)
        bad[1, 0] = np.inf
        with pytest.raises(ValueError, match="NaN or inf"):
            venv.step(bad)
        with pytest.raises(ValueError, match=r"shape \(2, 1\), expected \(3, 1\)"):
            venv.step(np.zeros((2, 1), np.float32))
        with pytest.raises(ValueError, match="shape"):
            venv.step(np.zeros(3, np.float32))
        # Nothing was sent: the envs are where reset left them and still step normally.
        reference = make_vector_env(PENDULUM, 3, workers=0)
        reference.reset(seed=0)
        good = np.full((3, 1), 0.5, np.float32)
        np.testing.assert_array_equal(venv.step(good)[0], reference.step(good)[0])
        reference.close()


@pytest.mark.parametrize(("workers", "caller_steps"), [(0, False), (1, False), (1, True)])
def test_nan_observation_never_reaches_caller(workers: int, caller_steps: bool) -> None:
    venv = ParallelVectorEnv([FlakyEnv, lambda: FlakyEnv(nan_at=3)], workers=workers, caller_steps=caller_steps)
    venv.reset(seed=0)
    zeros = np.zeros((2, 2), np.float32)
    for t in range(1, 6):
        obs, rew, term, trunc, info = venv.step(zeros)
        assert np.isfinite(obs).all() and np.isfinite(info["final_obs"]).all()
        if t == 3:
            assert trunc[1] and not term[1] and info["physics_unstable"][1] and rew[1] == 0.0
            np.testing.assert_array_equal(info["final_obs"][1], np.full(3, 2.0))  # last finite observation
            assert info["episode_length"][1] == 3
        else:
            assert not info["physics_unstable"].any()
    venv.close()


def test_unstable_physics_of_our_task_is_reported() -> None:
    """A diverging pendulum (huge velocity) ends as truncated with physics_unstable and a finite obs."""
    with make_vector_env(PENDULUM, 2, workers=0) as venv:
        venv.reset(seed=0)
        env = venv._runner.envs[1]  # reach into the in-process env to break its physics
        env.data.qvel[:] = 1e12
        obs, rew, term, trunc, info = venv.step(np.zeros((2, 1), np.float32))
        assert info["physics_unstable"].tolist() == [False, True]
        assert trunc[1] and not term[1]
        assert np.isfinite(obs).all() and np.isfinite(info["final_obs"]).all()


# ---- clean shutdown -------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().split()[2] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


def _our_shm_entries() -> set[str]:
    """/dev/shm entries multiprocessing could have created for this process."""
    prefixes = ("psm_", f"pym-{os.getpid()}", "sem.mp-", "mp-")
    return {p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(prefixes)}


def test_close_leaves_no_processes_and_no_shared_memory() -> None:
    before = _our_shm_entries()
    venv = make_vector_env(CHEETAH, 4, workers=2)
    venv.reset(seed=0)
    venv.step(np.zeros((4, 6), np.float32))
    pids = venv.worker_pids
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    venv.close()
    venv.close()  # idempotent
    assert not any(_alive(pid) for pid in pids)
    assert _our_shm_entries() <= before
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(np.zeros((4, 6), np.float32))
    # The buffers' file is unlinked at creation, so /dev/shm shows nothing either way; what would leak is the
    # mapping. multiprocessing keeps a freed arena mapped for reuse: more envs opened and closed must not add any.
    mapped = _shared_mappings()
    for _ in range(3):
        make_vector_env(CHEETAH, 4, workers=2).close()
    assert _shared_mappings() <= mapped


def _shared_mappings() -> int:
    """Shared-memory mappings of this process (multiprocessing arenas: deleted files under /dev/shm or tmp)."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return sum(1 for line in f if "rw-s" in line and ("pym-" in line or "/dev/shm" in line))


@pytest.mark.parametrize(("workers", "caller_steps"), [(2, False), (1, True)])
def test_garbage_collected_env_ends_its_workers(workers: int, caller_steps: bool) -> None:
    venv = make_vector_env(PENDULUM, 2, workers=workers, caller_steps=caller_steps)
    pids = venv.worker_pids
    assert len(pids) == workers
    del venv
    import gc

    gc.collect()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


def test_workers_exit_when_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the owning process leaves no orphan worker behind."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from sim.vector import make_vector_env\n"
        f"venv = make_vector_env({PENDULUM!r}, 2, workers=2)\n"
        "print(*venv.worker_pids, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in owner.stdout.readline().split()]
    assert len(pids) == 2
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)


# ---- the benchmark command ---------------------------------------------------------------------------
def test_bench_sim_quick_writes_json(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rl_control.cli", "bench", "sim", "--quick", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(path.read_text())
    assert data["benchmark"] == "sim" and "--quick" in data["command"]
    assert {"python", "packages", "cpu_model", "usable_cores", "peers"} <= set(data["environment"])
    assert data["load_before"] and data["load_after"]
    cells = {(r["task"], r["num_envs"]) for r in data["results"]}
    assert (CHEETAH, 2) in cells and (PENDULUM, 2) in cells
    for row in data["results"]:
        assert row["median"]["ours"] > 0 and row["median"]["bound"] > 0
        assert "ours/sync" in row["ratios"]
    assert "envpool" in data["environment"]["peers"]  # reported either way, installed or not


@pytest.mark.parametrize("batch_kernels", [True, False])
def test_a_reset_mujoco_makes_by_itself_is_reported_as_unstable_physics(batch_kernels: bool) -> None:
    """MuJoCo resets diverged data (here a velocity beyond 1e10) to the initial state and carries on; the
    vector env still cuts that episode as physics_unstable, with the last good observation as final_obs."""
    with make_vector_env(CHEETAH, 2, workers=0, seed=4, batch_kernels=batch_kernels) as venv:
        assert venv.kernels == (["HalfCheetahKernel"] if batch_kernels else ["LoopKernel"])
        venv.reset(seed=4)
        zeros = np.zeros((2, 6), np.float32)
        obs, *_ = venv.step(zeros)
        data = venv._runner.envs[1].unwrapped.data  # reach into the in-process env to break its physics
        data.qvel[:] = 1e11
        new_obs, rew, term, trunc, info = venv.step(zeros)
        assert info["physics_unstable"].tolist() == [False, True]
        assert trunc.tolist() == [False, True] and not term.any() and rew[1] == 0.0
        np.testing.assert_array_equal(info["final_obs"][1], obs[1])  # the last good observation
        assert np.isfinite(new_obs).all() and info["episode_length"][1] == 2
        obs, rew, term, trunc, info = venv.step(zeros)  # the new episode runs normally
        assert not info["physics_unstable"].any() and not trunc.any()
