"""Scale-out of rollout collection on Ray: per-worker throughput, per-iteration overhead, projection to 128.

Contenders, measured interleaved (A, B, C, A, B, C, ...) after a warm-up, each one collection iteration of
``--steps`` steps on ``--envs`` envs per worker with the same MLP policy:

- ``local``: one :class:`~rl_control.distributed.ray_rollout.RolloutWorker` in this process (no Ray) and the
  learner's assembly (:func:`~rl_control.distributed.ray_rollout.fill_buffer`: reward scaling, GAE): what one
  worker's share costs without any distribution; the peer;
- ``ray x1`` / ``ray x2``: :class:`~rl_control.distributed.ray_rollout.RayRolloutCollector` with 1 and 2 Ray
  actors on a private local Ray cluster: weights ``ray.put`` once, every worker loads them and steps its envs,
  the learner gathers and assembles.

For each Ray contender the iteration is split into the costs the collector measures itself: worker compute
(load + rollout, the slowest worker), weight broadcast (``ray.put`` on the learner; workers' load time is
reported apart), dispatch + data transfer (from submitting the calls to the last result, beyond the slowest
worker's compute) and assembly on the learner. One PPO update of the assembled batch is timed too (the learner
updates while the workers wait: collection is synchronous for on-policy algorithms).

The projection to 8, 32 and 128 workers uses only those measured costs: per-worker compute stays that of one
worker on its own core (``ray x1``); broadcast, dispatch + transfer and assembly grow linearly in the number of
workers with the slope measured between 1 and 2 workers (the intercept is the 1-worker cost); the update time
is linear in the batch size (fitted on the 1- and 2-worker batches). Projected env-steps/s = W * envs * steps /
(worker compute + overhead(W) + update(W)). Not modelled: network bandwidth between machines (here all
transfers are between processes of one machine), stragglers (the slowest of W workers is slower than the
median of 1), and Ray's own head-node limits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque
from typing import Any

import numpy as np

from rl_control.bench import common

PROJECT_WORKERS = (8, 32, 128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="quadruped_walk", help="task id (default quadruped_walk)")
    parser.add_argument("--envs", type=int, default=8, help="envs per worker (default 8)")
    parser.add_argument("--steps", type=int, default=128, help="rollout steps per env per iteration (default 128)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurement rounds (default 7)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a private local cluster)")
    parser.add_argument("--node-ip-address", default=None,
                        help="this process's address for Ray (e.g. 127.0.0.2 keeps a local cluster on loopback)")
    parser.add_argument("--temp-dir", default=None, help="a local cluster's folder for sockets and logs "
                        "(default: Ray's /tmp/ray)")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")


def _config(task: str, envs: int, steps: int, workers: int, address: str | None, node_ip: str | None):
    from rl_control.config import load_config

    overrides = [
        f"env.task={task}", f"env.num_envs={envs * workers}", "env.workers=0", f"algo.rollout_steps={steps}",
        "distributed.backend=ray", f"distributed.workers={workers}", "distributed.worker_timeout_s=120",
    ]
    if address:
        overrides.append(f"distributed.address={address}")
    if node_ip:
        overrides.append(f"distributed.node_ip_address={node_ip}")
    return load_config(None, overrides)


def _buffer(policy, cfg):
    from rl_control.buffers import RolloutBuffer

    return RolloutBuffer(cfg.algo.rollout_steps, cfg.env.num_envs, policy.obs_size,
                         () if policy.discrete else (policy.action_size,), policy.action_size,
                         policy.state_shape_per_env)


def _stats() -> dict[str, deque]:
    return {k: deque(maxlen=50) for k in ("return", "length", "success")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure, print the tables and the projection, return the JSON payload."""
    report = common.start_report("scale")
    threads = common.set_single_threaded_libraries()
    quick = bool(getattr(args, "quick", False))
    task, envs, steps, rounds = args.task, args.envs, args.steps, args.rounds
    if quick:
        task, envs, steps, rounds = "pendulum_swingup", 2, 16, 2

    import ray
    import torch

    from rl_control.algorithms import make_algorithm
    from rl_control.distributed.ray_rollout import (
        RayRolloutCollector,
        RolloutWorker,
        connect,
        fill_buffer,
        policy_weights,
    )
    from rl_control.normalizer import RewardScaler
    from rl_control.runner import build_policy

    torch.set_num_threads(1)
    cfg1, cfg2 = (_config(task, envs, steps, w, args.address, args.node_ip_address) for w in (1, 2))
    started = time.perf_counter()
    owns_ray = connect(cfg2.distributed, cpus_needed=3, temp_dir=args.temp_dir)  # 1 + 2 actors at once
    collectors: list[RayRolloutCollector] = []
    local = None
    try:
        collectors = [RayRolloutCollector(cfg) for cfg in (cfg1, cfg2)]
        startup_s = time.perf_counter() - started
        policy = build_policy(cfg1, collectors[0].single_observation_space, collectors[0].single_action_space)
        local = RolloutWorker(cfg1, 0, envs, seed=0, rng_seed=0)
        for c in collectors:
            c.attach(policy, None)
            c.reset(seed=0)
        buffers = [_buffer(policy, cfg1), _buffer(policy, cfg2)]
        breakdown: dict[str, list[dict[str, float]]] = {"ray x1": [], "ray x2": []}
        local_scaler = RewardScaler(envs, cfg1.algo.gamma)

        def run_local() -> float:
            t0 = time.perf_counter()
            result = local.rollout(policy_weights(policy), steps)
            fill_buffer(buffers[0], [(0, envs)], [result], cfg1, local_scaler, _stats())
            return envs * steps / (time.perf_counter() - t0)

        def ray_contender(k: int):
            name, collector, workers = f"ray x{k + 1}", collectors[k], k + 1

            def measure() -> float:
                t0 = time.perf_counter()
                collector.collect(buffers[k], None, None, None, _stats())
                wall = time.perf_counter() - t0
                breakdown[name].append({**collector.last_timing, "wall_s": wall})
                return workers * envs * steps / wall
            return measure

        timings = common.interleaved({"local": run_local, "ray x1": ray_contender(0), "ray x2": ray_contender(1)},
                                     rounds=rounds, warmup=1)
        # Warm-up iterations are in the breakdown lists too: keep the measured rounds only.
        costs = {name: _median_costs(rows[-rounds:], envs, steps) for name, rows in breakdown.items()}
        update = _update_times(make_algorithm, policy, cfg2, buffers, repeats=1 if quick else 3)
    finally:
        if local is not None:
            local.close()
        for c in collectors:
            c.close()
        if owns_ray and ray.is_initialized():
            ray.shutdown()

    projection = _project(costs, update, envs, steps)
    rate_cols = ["contender", "env-steps/s", "ratio to local"]
    rows = [
        [name, common.fmt_rate(t), common.fmt_ratio(common.ratio(t.median, timings["local"].median))]
        for name, t in timings.items()
    ]
    common.print_table(
        f"collection env-steps/s, {task}, {envs} envs x {steps} steps per worker "
        f"(median ±half range of {rounds} interleaved rounds, {common.usable_cores()} cores)",
        rate_cols, rows, caption="local: one worker's rollout + assembly in this process, no Ray",
    )
    cost_cols = ["workers", "per-worker steps/s", "worker compute ms", "broadcast ms", "weights load ms",
                 "dispatch+transfer ms", "assembly ms", "overhead ms", "rollout data MB", "update ms"]
    cost_rows = [
        [str(w), f"{c['per_worker_steps_per_s']:.0f}", f"{c['worker_max_s'] * 1e3:.1f}",
         f"{c['broadcast_s'] * 1e3:.2f}", f"{c['load_mean_s'] * 1e3:.2f}", f"{c['transfer_s'] * 1e3:.1f}",
         f"{c['assemble_s'] * 1e3:.1f}",
         f"{c['overhead_s'] * 1e3:.1f}", f"{c['result_bytes'] / 1e6:.2f}", f"{update['by_workers'][w] * 1e3:.0f}"]
        for w, c in ((1, costs["ray x1"]), (2, costs["ray x2"]))
    ]
    common.print_table("per-iteration costs (medians)", cost_cols, cost_rows)
    proj_cols = ["workers", "collection s", "overhead s", "update s", "env-steps/s", "collection-only env-steps/s",
                 "efficiency"]
    proj_rows = [
        [str(p["workers"]), f"{p['worker_s']:.3f}", f"{p['overhead_s']:.3f}", f"{p['update_s']:.3f}",
         f"{p['steps_per_s']:.0f}", f"{p['collect_steps_per_s']:.0f}", f"{p['efficiency']:.0%}"]
        for p in projection["rows"]
    ]
    common.print_table("projection from the measured costs (see the module docstring for the model)",
                       proj_cols, proj_rows, caption=projection["text"])
    if getattr(args, "markdown", False):
        for columns, table in ((rate_cols, rows), (cost_cols, cost_rows), (proj_cols, proj_rows)):
            print(common.markdown_table(columns, table), end="\n\n")
    return common.finish_report(
        report, [common.PeerStatus("ray", True, common.package_version("ray"))],
        settings={"task": task, "envs_per_worker": envs, "steps": steps, "rounds": rounds, "address": args.address,
                  "node_ip_address": args.node_ip_address,
                  "threads_set": threads, "torch_threads": 1, "startup_s": startup_s},
        timings={k: v.to_dict() for k, v in timings.items()},
        costs=costs, update=update, projection=projection,
    )


def _median_costs(rows: list[dict[str, float]], envs: int, steps: int) -> dict[str, float]:
    """Median of each measured cost over the rounds, plus the derived dispatch + transfer time."""
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["transfer_s"] = statistics.median(r["gather_s"] - r["worker_max_s"] for r in rows)
    med["per_worker_steps_per_s"] = envs * steps / statistics.median(r["worker_rollout_mean_s"] for r in rows)
    return med


def _update_times(make_algorithm, policy, cfg, buffers, repeats: int) -> dict[str, Any]:
    """Median time of one PPO update (the config's epochs and minibatches) on the 1- and 2-worker batches."""
    rng = np.random.default_rng(0)
    by_workers = {}
    for workers, buffer in ((1, buffers[0]), (2, buffers[1])):
        samples = []
        for _ in range(repeats):
            algo = make_algorithm(policy, cfg.algo, 1000)
            t0 = time.perf_counter()
            algo.update(buffer, rng)
            samples.append(time.perf_counter() - t0)
        by_workers[workers] = statistics.median(samples)
    return {"by_workers": by_workers, "epochs": cfg.algo.epochs, "minibatches": cfg.algo.minibatches}


def _linear(y1: float, y2: float) -> tuple[float, float]:
    """(intercept, slope) of y(W) = a + b W through W=1 and W=2; the slope is clamped at 0 (noise)."""
    b = max(0.0, y2 - y1)
    return y1 - b, b


def _project(costs: dict[str, dict[str, float]], update: dict[str, Any], envs: int, steps: int) -> dict[str, Any]:
    """Throughput at :data:`PROJECT_WORKERS` from the measured 1- and 2-worker costs (model: module docstring)."""
    c1, c2 = costs["ray x1"], costs["ray x2"]
    worker_s = c1["worker_max_s"]
    fits = {name: _linear(c1[name], c2[name]) for name in ("broadcast_s", "transfer_s", "assemble_s")}
    upd = _linear(update["by_workers"][1], update["by_workers"][2])
    single = envs * steps / (worker_s + sum(a + b for a, b in fits.values()) + upd[0] + upd[1])
    rows = []
    for w in (1, 2, *PROJECT_WORKERS):
        overhead = sum(a + b * w for a, b in fits.values())
        update_s = upd[0] + upd[1] * w
        batch = w * envs * steps
        total = worker_s + overhead + update_s
        rows.append({
            "workers": w, "worker_s": worker_s, "overhead_s": overhead, "update_s": update_s,
            "steps_per_s": batch / total, "collect_steps_per_s": batch / (worker_s + overhead),
            "efficiency": batch / total / (w * single),
        })
    last = rows[-1]
    share = last["update_s"] / (last["worker_s"] + last["overhead_s"] + last["update_s"])
    text = (
        f"At {last['workers']} workers the learner's update takes {share:.0%} of an iteration and the "
        f"collection overhead {last['overhead_s'] / (last['worker_s'] + last['overhead_s'] + last['update_s']):.0%}; "
        "past the point where update + overhead exceed the workers' compute, more workers mostly buy a bigger "
        "batch per iteration, not more env-steps/s."
    )
    return {"fits": {k: {"intercept": a, "slope": b} for k, (a, b) in fits.items()},
            "update_fit": {"intercept": upd[0], "slope": upd[1]}, "rows": rows, "text": text}
