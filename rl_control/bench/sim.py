"""Simulation throughput: our vector env vs Gymnasium Sync/Async, EnvPool and the raw-physics bound.

For each task (HalfCheetah-v5 and our robot tasks) and each number of envs, measures env-steps/s of

- ``ours``: :class:`sim.vector.ParallelVectorEnv` with its defaults: one stepping process per core (the
  caller and a worker per further core, at most one per env; a single env in-process);
- ``ours procs``: where ``ours`` has more than one stepping core, the same envs in one worker process per
  core while the caller only waits (``caller_steps=False``, one thread each), the earlier default layout;
- ``ours threads``: for envs with a GIL-releasing batched kernel (HalfCheetah-v5) and more than one env,
  one kernel thread per core in-process (``workers=0``), the earlier default for them;
- ``sync`` / ``async``: Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` (shared memory) over the
  same env factory;
- ``envpool``: EnvPool's own HalfCheetah-v5 (only in the benchmark venv, ``make bench-setup``; reported as
  missing otherwise; it has no equivalent of our robot tasks) with as many threads as we use cores;
- ``bound``: the raw-physics bound, single-thread ``mj_step`` rate / frame skip x cores we use, measured on
  the same model with random controls.

Contenders are measured interleaved (A, B, A, B, ...) after a warm-up; the table shows medians with
± half the min-max range and the ratios ours/peer of the medians. Random actions are drawn once per cell
(uniform in the action space) and cycled, so every contender steps the same action sequence.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from rl_control.bench import common

DEFAULT_ENVS = (1, 2, 8, 16, 64)
QUICK_ENVS = (2,)
HALF_CHEETAH = "HalfCheetah-v5"
ENVPOOL_IDS = {HALF_CHEETAH}  # EnvPool implementations of the same envs
PEERS = ("sync", "async", "envpool")
ACTION_BATCHES = 16  # distinct random action batches cycled by every contender


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", help="comma-separated task ids (default: HalfCheetah-v5 and all robot tasks)")
    parser.add_argument("--envs", help=f"comma-separated env counts (default: {','.join(map(str, DEFAULT_ENVS))})")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers out of sync,async,envpool")
    # Many short rounds: the median then shrugs off bursts of other jobs on a shared machine.
    parser.add_argument("--rounds", type=int, default=9, help="interleaved measurement rounds (default 9)")
    parser.add_argument("--seconds", type=float, default=0.2, help="seconds per measurement (default 0.2)")
    parser.add_argument(
        "--workers", type=int, default=None, help="our worker processes (default: ParallelVectorEnv's choice)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every (task, num_envs) cell, print the table and return the JSON payload."""
    from sim.tasks import TASKS

    report = common.start_report("sim")
    threads = common.set_single_threaded_libraries()
    quick = bool(getattr(args, "quick", False))
    tasks = _split(args.tasks) if args.tasks else [HALF_CHEETAH, *TASKS]
    if quick and not args.tasks:
        tasks = [HALF_CHEETAH, "pendulum_swingup"]
    env_counts = [int(x) for x in _split(args.envs)] if args.envs else list(QUICK_ENVS if quick else DEFAULT_ENVS)
    rounds, seconds = (2, 0.05) if quick else (args.rounds, args.seconds)
    peers = _split(args.peers)
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {','.join(PEERS)}")
    envpool = common.peer_status("envpool") if "envpool" in peers else None
    if envpool is not None and not envpool.available:
        print(f"EnvPool: {envpool.error}")
    cores = common.usable_cores()

    rows, table = [], []
    for task in tasks:
        bound_per_core = _raw_physics_contender(task, seconds)
        for n in env_counts:
            row = _measure_cell(task, n, peers, envpool, bound_per_core, cores, args.workers, rounds, seconds)
            rows.append(row)
            table.append(_table_row(row))
            print(f"  {task} x{n}: " + ", ".join(f"{k} {common.fmt_rate(v)}" for k, v in row["_timings"].items()))

    columns = ["task", "envs", "ours", "ours procs", "ours threads", "sync", "async", "envpool", "bound",
               "ours/sync", "ours/async", "ours/envpool", "ours/bound"]  # fmt: skip
    title = f"env-steps/s (median ±half range of {rounds} interleaved rounds, {cores} cores)"
    caption = (
        "bound = single-thread mj_step rate / frame skip x cores we use; ours/bound is the fraction of raw "
        "physics our vector env delivers."
    )
    common.print_table(title, columns, table, caption=caption)
    if getattr(args, "markdown", False):
        print(common.markdown_table(columns, table))
    targets = _targets(rows)
    busy = report["load_before"] and report["load_before"][0] > 0.5
    if busy:
        targets["lines"].append(
            f"note: the machine was busy before the run (load {report['load_before'][0]:.2f}); process pools "
            "with a barrier per step suffer more from other jobs than work-stealing thread pools"
        )
    for line in targets["lines"]:
        print(line)
    for row in rows:
        row["timings"] = {k: v.to_dict() for k, v in row.pop("_timings").items()}
    peer_list = [envpool] if envpool is not None else []
    return common.finish_report(
        report,
        peer_list,
        settings={
            "tasks": tasks,
            "envs": env_counts,
            "rounds": rounds,
            "seconds": seconds,
            "peers": peers,
            "workers": args.workers,
            "quick": quick,
            "thread_env_set": threads,
        },
        results=rows,
        targets=targets,
    )


def _split(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# ---- contenders ------------------------------------------------------------------------------------
def _random_actions(space: Any, n: int, seed: int) -> np.ndarray:
    """[ACTION_BATCHES, n, *A] actions uniform in a Box (integers for a Discrete space)."""
    import gymnasium as gym

    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Box):
        low = np.where(np.isfinite(space.low), space.low, -1.0)
        high = np.where(np.isfinite(space.high), space.high, 1.0)
        return rng.uniform(low, high, (ACTION_BATCHES, n, *space.shape)).astype(space.dtype)
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, (ACTION_BATCHES, n)).astype(space.dtype)
    raise SystemExit(f"bench sim supports Box and Discrete action spaces, got {space}")


class _Stepper:
    """A vector env plus a cycling action source; ``rate()`` is one timed measurement."""

    def __init__(self, env: Any, actions: np.ndarray, n: int, seconds: float, close: Callable[[], None]) -> None:
        self.env, self.actions, self.n, self.seconds, self.close = env, actions, n, seconds, close
        self.i = 0

    def _step(self) -> None:
        self.env.step(self.actions[self.i % ACTION_BATCHES])
        self.i += 1

    def rate(self) -> float:
        return common.timed_rate(self._step, self.n, self.seconds)


def _make_contenders(
    task: str, n: int, peers: list[str], envpool_ok: bool, cores: int, workers: int | None, seconds: float
) -> tuple[dict[str, _Stepper], dict[str, Any]]:
    import gymnasium as gym

    from sim.tasks import env_factory
    from sim.vector import ParallelVectorEnv, default_workers

    fn = env_factory(task)
    notes: dict[str, Any] = {}
    steppers: dict[str, _Stepper] = {}
    ours = ParallelVectorEnv([fn] * n, workers, seed=0)
    ours.reset()
    actions = _random_actions(ours.single_action_space, n, seed=n)
    steppers["ours"] = _Stepper(ours, actions, n, seconds, ours.close)
    notes.update(
        workers=ours.num_workers, caller_steps=ours.caller_steps, threads=ours.threads,
        kernel=sorted(set(ours.kernels)),
        cores_used=min(ours.parallelism, cores),
    )  # fmt: skip
    if n > 1 and (ours.caller_steps or (ours.num_workers == 0 and ours.threads > 1)):
        # Also show one worker process per core with a waiting caller, on the same envs.
        procs = ParallelVectorEnv([fn] * n, default_workers(n), seed=0, threads=1, caller_steps=False)
        procs.reset()
        steppers["ours_procs"] = _Stepper(procs, actions, n, seconds, procs.close)
    if n > 1 and cores > 1 and ours.kernels[0] != "LoopKernel":
        threaded = ParallelVectorEnv([fn] * n, 0, seed=0)
        if threaded.threads > 1:  # only kernels that release the GIL get threads
            threaded.reset()
            steppers["ours_threads"] = _Stepper(threaded, actions, n, seconds, threaded.close)
        else:
            threaded.close()
    if "sync" in peers:
        env = gym.vector.SyncVectorEnv([fn] * n)
        env.reset(seed=0)
        steppers["sync"] = _Stepper(env, actions, n, seconds, env.close)
    if "async" in peers:
        env = gym.vector.AsyncVectorEnv([fn] * n, shared_memory=True)
        env.reset(seed=0)
        steppers["async"] = _Stepper(env, actions, n, seconds, env.close)
    if "envpool" in peers:
        if task not in ENVPOOL_IDS:
            notes["envpool"] = "no EnvPool implementation of this task"
        elif envpool_ok:
            import envpool

            threads = max(1, min(n, cores))
            env = envpool.make_gymnasium(task, num_envs=n, batch_size=n, num_threads=threads, seed=0)
            env.reset()
            pool_actions = actions.astype(env.action_space.dtype)
            steppers["envpool"] = _Stepper(env, pool_actions, n, seconds, env.close)
            notes["envpool_threads"] = threads
        else:
            notes["envpool"] = "unavailable"
    return steppers, notes


def _raw_physics_contender(task: str, seconds: float) -> Callable[[], float] | None:
    """A callable measuring single-thread env-steps/s of bare ``mj_step`` (frame skip per env step)."""
    import mujoco

    from sim.tasks import is_robot_task, make_env

    env = make_env(task)
    env.reset(seed=0)
    raw = env.unwrapped
    model, data = getattr(raw, "model", None), getattr(raw, "data", None)
    if not isinstance(model, mujoco.MjModel):
        return None  # not a MuJoCo env: no raw-physics bound
    frame_skip = int(raw.interface.substeps) if is_robot_task(task) else int(raw.frame_skip)
    episode = int(getattr(raw, "max_episode_steps", 0) or (env.spec.max_episode_steps if env.spec else 0) or 1000)
    # A private MjData starting from the env's reset state; episodes restart from it as in the envs.
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    start_state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, raw.data, start_state, spec)
    data = mujoco.MjData(model)
    mujoco.mj_setState(model, data, start_state, spec)
    lo, hi = model.actuator_ctrlrange[:, 0].copy(), model.actuator_ctrlrange[:, 1].copy()
    unlimited = ~model.actuator_ctrllimited.astype(bool)
    lo[unlimited], hi[unlimited] = -1.0, 1.0
    controls = np.random.default_rng(0).uniform(lo, hi, (256, model.nu))
    state = {"t": 0}
    step = mujoco.mj_step

    def one_env_step() -> None:
        t = state["t"]
        data.ctrl[:] = controls[t % 256]
        step(model, data, frame_skip)
        state["t"] = t + 1
        if (t + 1) % episode == 0:
            mujoco.mj_setState(model, data, start_state, spec)

    return lambda: common.timed_rate(one_env_step, 1, seconds)


def _measure_cell(
    task: str,
    n: int,
    peers: list[str],
    envpool: common.PeerStatus | None,
    bound_per_core: Callable[[], float] | None,
    cores: int,
    workers: int | None,
    rounds: int,
    seconds: float,
) -> dict[str, Any]:
    steppers, notes = _make_contenders(task, n, peers, bool(envpool and envpool.available), cores, workers, seconds)
    contenders: dict[str, Callable[[], float]] = {name: s.rate for name, s in steppers.items()}
    if bound_per_core is not None:
        contenders["bound_1core"] = bound_per_core
    try:
        timings = common.interleaved(contenders, rounds=rounds, warmup=1)
    finally:
        for s in steppers.values():
            s.close()
    if "bound_1core" in timings:
        one = timings.pop("bound_1core")
        timings["bound"] = common.Timing([x * notes["cores_used"] for x in one.samples])
    med = {k: v.median for k, v in timings.items()}
    ratios = {
        f"ours/{k}": common.ratio(med["ours"], med.get(k))
        for k in ("ours_procs", "ours_threads", "sync", "async", "envpool", "bound")
    }
    return {"task": task, "num_envs": n, "median": med, "ratios": ratios, "notes": notes, "_timings": timings}


def _table_row(row: dict[str, Any]) -> list[str]:
    t, notes = row["_timings"], row["notes"]
    envpool = common.fmt_rate(t.get("envpool")) if "envpool" in t else notes.get("envpool", "-")
    if envpool == "no EnvPool implementation of this task":
        envpool = "n/a"
    return [
        row["task"] + (" *" if notes.get("kernel") and notes["kernel"] != ["LoopKernel"] else ""),
        str(row["num_envs"]),
        common.fmt_rate(t.get("ours")),
        common.fmt_rate(t.get("ours_procs")) if "ours_procs" in t else "= ours",
        common.fmt_rate(t.get("ours_threads")) if "ours_threads" in t else "-",
        common.fmt_rate(t.get("sync")),
        common.fmt_rate(t.get("async")),
        envpool,
        common.fmt_rate(t.get("bound")),
        *(common.fmt_ratio(row["ratios"][f"ours/{k}"]) for k in ("sync", "async", "envpool", "bound")),
    ]


def _targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 2's targets at 16 envs on HalfCheetah-v5: >= 70% of the bound, ahead of EnvPool."""
    cell = next((r for r in rows if r["task"] == HALF_CHEETAH and r["num_envs"] == 16), None)
    if cell is None:
        return {"lines": ["targets: not evaluated (needs HalfCheetah-v5 at 16 envs)"], "evaluated": False}
    of_bound, vs_pool = cell["ratios"]["ours/bound"], cell["ratios"]["ours/envpool"]
    bound_ok = of_bound is not None and of_bound >= 0.70
    pool_ok = vs_pool is not None and vs_pool > 1.0
    lines = [
        f"target HalfCheetah-v5 x16 >= 70% of the raw-physics bound: {common.fmt_ratio(of_bound)} -> "
        f"{'met' if bound_ok else 'NOT met'}",
        f"target HalfCheetah-v5 x16 ahead of EnvPool: ours/envpool {common.fmt_ratio(vs_pool)} -> "
        + ("met" if pool_ok else "NOT met" if vs_pool is not None else "not measured (EnvPool unavailable)"),
        "ours = the caller and one worker process per further core; * = stepped by a batched kernel "
        "(sim.vector_kernels), other tasks call env.step per env; 'ours procs' = one worker process per core "
        "while the caller waits; 'ours threads' = the batched kernel on one thread per core in-process",
    ]
    return {
        "lines": lines,
        "evaluated": True,
        "of_bound": of_bound,
        "vs_envpool": vs_pool,
        "bound_met": bound_ok,
        "envpool_met": pool_ok,
    }
