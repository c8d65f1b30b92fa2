"""Training throughput and return: our PPO / LSTM-PPO vs Stable-Baselines3 PPO / sb3-contrib RecurrentPPO, and
(suites sac, td3, tqc, run by :mod:`rl_control.bench.train_offpolicy`) our SAC / TD3 / TQC vs SB3 / sb3-contrib.

Each contender trains in its own subprocess (fresh interpreter, one torch thread, same seed), runs
interleaved A, B, A, B, ...; the same hyper-parameters on the same Gymnasium env; our runner steps its envs
in-process (``workers: 0``) like SB3's DummyVecEnv, so the comparison is of the learning code, not of
parallel simulation (an extra row shows our default with 2 simulation workers). Reported: env-steps per
second of wall time including updates, and the deterministic evaluation return after the same budget.

SB3 and sb3-contrib are benchmark-only peers: install them with ``make bench-setup`` and run
``.venv-bench/bin/rlctl bench train``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rl_control.bench import common
from rl_control.bench.train_offpolicy import HIDDEN_MATMUL_CHOICES

# Shared hyper-parameters (SB3 names on the left, ours derived from them).
HPARAMS = {
    "n_envs": 8,
    "n_steps": 256,
    "n_epochs": 10,
    "minibatches": 4,
    "lr": 3e-4,
    "gamma": 0.99,
    "gae_lambda": 0.95,
    "clip": 0.2,
    "hidden": 64,
    "lstm_hidden": 64,
}
OFFPOLICY_SUITES = ("sac", "td3", "tqc")
SUITES = {
    # name: (env id, recurrent?, default budget)
    # Feed-forward budgets long enough that the returns compare learning, not just speed (100 iterations).
    "mlp": ("InvertedPendulum-v5", False, 204_800),
    "mlp-cheetah": ("HalfCheetah-v5", False, 204_800),
    "lstm": ("pendulum_swingup_novel", True, 40_960),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suites",
        default="mlp,mlp-cheetah,lstm,acktr,sac,td3,tqc",
        help="comma-separated: mlp (PPO on InvertedPendulum-v5), mlp-cheetah (PPO on HalfCheetah-v5), lstm "
        "(recurrent PPO), acktr (K-FAC vs Adam update time), sac, td3, tqc (off-policy: update throughput and "
        "return vs SB3 / sb3-contrib, rl_control.bench.train_offpolicy)",
    )
    parser.add_argument(
        "--offpolicy-envs", default="Pendulum-v1,HalfCheetah-v5", help="envs of the off-policy throughput part"
    )
    parser.add_argument(
        "--offpolicy-parts", default="throughput,learning", help="off-policy parts: throughput, learning"
    )
    parser.add_argument(
        "--offpolicy-learning-envs",
        default="Pendulum-v1",
        help="envs of the off-policy learning part, comma-separated: Pendulum-v1, HalfCheetah-v5",
    )
    parser.add_argument(
        "--offpolicy-steps",
        type=int,
        default=0,
        help="off-policy learning budget in env steps, all learning envs (default per env: Pendulum-v1 20k, "
        "HalfCheetah-v5 60k)",
    )
    parser.add_argument(
        "--offpolicy-hidden-matmul",
        choices=HIDDEN_MATMUL_CHOICES,
        default="float32",
        help="our off-policy algo.hidden_matmul (bfloat16 hidden-to-hidden products; SB3 stays float32)",
    )
    parser.add_argument("--steps", type=int, default=0, help="env steps per run (default: per suite)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs per contender")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one contender and print JSON
    parser.add_argument("--suite", help=argparse.SUPPRESS)


# ---- one contender, inside its own process ---------------------------------------------------------------
def _our_run(env_id: str, recurrent: bool, steps: int, workers: int) -> dict:
    from rl_control.config import load_config
    from rl_control.runner import Runner

    h = HPARAMS
    overrides = [
        f"env.task={env_id}",
        f"env.num_envs={h['n_envs']}",
        f"env.workers={workers}",
        "env.randomization.enabled=false",
        f"algo.rollout_steps={h['n_steps']}",
        f"algo.epochs={h['n_epochs']}",
        f"algo.minibatches={h['minibatches']}",
        f"algo.lr={h['lr']}",
        f"algo.gamma={h['gamma']}",
        f"algo.gae_lambda={h['gae_lambda']}",
        f"algo.clip_range={h['clip']}",
        "algo.entropy_coef=0.0",
        f"policy.hidden_sizes=[{h['hidden']}, {h['hidden']}]",
        "policy.init_log_std=0.0",
        "policy.normalize_obs=false",
        f"policy.kind={'lstm' if recurrent else 'mlp'}",
        f"policy.lstm_hidden={h['lstm_hidden']}",
        f"runner.total_steps={steps}",
        "runner.eval_every=100000",
        "runner.checkpoint_every=100000",
        "runner.eval_episodes=1",
    ]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        runner = Runner(cfg, run_dir, show_progress=False)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        result = runner.train()
        # The whole train() call, timed like SB3's learn(): env reset, collection, updates, logging, and
        # also what SB3's learn() does not do (the runner's one-episode final evaluation and its checkpoint
        # write), so the comparison leans, if anything, against us.
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        from rl_control.metrics import read_metrics

        loop = sum(r["time/collect_s"] + r["time/update_s"] for r in read_metrics(run_dir))
        from rl_control.evaluation import TorchPolicy

        policy = TorchPolicy(runner.policy)
    return {"steps": result.global_step, "wall_s": wall, "loop_s": loop, "cpu_s": cpu,
            "eval": _evaluate(policy, env_id)}


class _SB3Policy:
    """Adapter from an SB3 model to our evaluation protocol (reset / act)."""

    def __init__(self, model, recurrent: bool) -> None:
        self.model, self.recurrent = model, recurrent
        self.reset()

    def reset(self) -> None:
        self.state, self.start = None, True

    def act(self, obs):
        import numpy as np

        if self.recurrent:
            action, self.state = self.model.predict(
                obs, state=self.state, episode_start=np.array([self.start]), deterministic=True
            )
        else:
            action, _ = self.model.predict(obs, deterministic=True)
        self.start = False
        return action


def _sb3_run(env_id: str, recurrent: bool, steps: int) -> dict:
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sim.tasks import make_env

    torch.set_num_threads(1)
    h = HPARAMS
    venv = DummyVecEnv([lambda: make_env(env_id) for _ in range(h["n_envs"])])
    batch = h["n_envs"] * h["n_steps"] // h["minibatches"]
    common_kwargs = dict(
        n_steps=h["n_steps"],
        batch_size=batch,
        n_epochs=h["n_epochs"],
        learning_rate=h["lr"],
        gamma=h["gamma"],
        gae_lambda=h["gae_lambda"],
        clip_range=h["clip"],
        ent_coef=0.0,
        seed=0,
        device="cpu",
        verbose=0,
    )
    arch = {
        "net_arch": {"pi": [h["hidden"], h["hidden"]], "vf": [h["hidden"], h["hidden"]]},
        "activation_fn": torch.nn.Tanh,
    }
    if recurrent:
        from sb3_contrib import RecurrentPPO

        model = RecurrentPPO(
            "MlpLstmPolicy",
            venv,
            policy_kwargs={**arch, "lstm_hidden_size": h["lstm_hidden"], "enable_critic_lstm": True},
            **common_kwargs,
        )
    else:
        from stable_baselines3 import PPO

        model = PPO("MlpPolicy", venv, policy_kwargs=arch, **common_kwargs)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "steps": int(model.num_timesteps),
        "wall_s": wall,
        "cpu_s": cpu,
        "eval": _evaluate(_SB3Policy(model, recurrent), env_id),
    }


def _evaluate(policy, env_id: str) -> float:
    from rl_control.evaluation import evaluate

    return evaluate(policy, env_id, episodes=10, seed=555).mean_return


def _worker_main(args: argparse.Namespace) -> None:
    env_id, recurrent, default_steps = SUITES[args.suite]
    steps = args.steps or default_steps
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.worker == "ours":
        out = _our_run(env_id, recurrent, steps, workers=0)
    elif args.worker == "ours-2workers":
        out = _our_run(env_id, recurrent, steps, workers=2)
    else:
        out = _sb3_run(env_id, recurrent, steps)
    print("RESULT " + json.dumps(out))


# ---- the benchmark driver ----------------------------------------------------------------------------------
def _spawn(worker: str, suite: str, steps: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "rl_control.cli",
        "bench",
        "train",
        "--worker",
        worker,
        "--suite",
        suite,
        "--steps",
        str(steps),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker {worker}/{suite} failed:\n{proc.stderr[-2000:]}")


def run(args: argparse.Namespace) -> dict:
    if args.worker:
        _worker_main(args)
        return {}
    report = common.start_report("bench train")
    sb3 = common.peer_status("stable-baselines3", "stable_baselines3")
    contrib = common.peer_status("sb3-contrib", "sb3_contrib")
    results = {}
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES) - {"acktr", *OFFPOLICY_SUITES})
    if unknown:
        raise SystemExit(f"bench train: unknown suite(s) {unknown}; known: {[*SUITES, 'acktr', *OFFPOLICY_SUITES]}")
    offpolicy_algos = [s for s in suites if s in OFFPOLICY_SUITES]
    suites = [s for s in suites if s not in OFFPOLICY_SUITES]
    acktr = None
    if "acktr" in suites:
        from rl_control.bench.acktr import run_acktr_overhead

        acktr = run_acktr_overhead(quick=args.quick)
        suites.remove("acktr")
    for suite in suites:
        env_id, recurrent, default_steps = SUITES[suite]
        steps = 4096 if args.quick else (args.steps or default_steps)
        peer = contrib if recurrent else sb3
        contenders = ["ours", "ours-2workers"] + (["sb3"] if peer.available else [])
        runs: dict[str, list[dict]] = {c: [] for c in contenders}
        for _ in range(1 if args.quick else args.repeats):
            for c in contenders:  # interleaved: A, B, C, A, B, C
                runs[c].append(_spawn(c, suite, steps))
        summary = {}
        for c, rs in runs.items():
            rates = common.Timing([r["steps"] / r["wall_s"] for r in rs])
            summary[c] = {
                "steps_per_s": rates.to_dict(),
                "steps_per_s_median": rates.median,
                "return_median": statistics.median([r["eval"] for r in rs]),
                "returns": [r["eval"] for r in rs],
                "cpu_s": [r["cpu_s"] for r in rs],
                "loop_s": [r.get("loop_s") for r in rs],  # ours: the logged collect + update part of wall_s
            }
        if "sb3" in summary:
            for c in ("ours", "ours-2workers"):
                summary[c]["speed_ratio_vs_sb3"] = (
                    summary[c]["steps_per_s_median"] / summary["sb3"]["steps_per_s_median"]
                )
        else:
            summary["sb3"] = {"unavailable": peer.error}
        results[suite] = {"env": env_id, "steps": steps, "contenders": summary}
    rows = []
    for suite, res in results.items():
        for c, s in res["contenders"].items():
            if "unavailable" in s:
                rows.append([suite, res["env"], c, "unavailable", "", "", s["unavailable"][:60]])
                continue
            rows.append(
                [
                    suite,
                    res["env"],
                    c,
                    f"{s['steps_per_s_median']:.0f}",
                    f"{s['return_median']:.1f}",
                    f"{s.get('speed_ratio_vs_sb3', float('nan')):.2f}",
                    "",
                ]
            )
    if rows:
        common.print_table(
            "bench train: PPO vs SB3 (env-steps/s incl. updates, 1 torch thread)",
            ["suite", "env", "contender", "steps/s", "eval return", "x SB3", "note"],
            rows,
        )
    offpolicy = None
    if offpolicy_algos:
        from rl_control.bench.train_offpolicy import run_offpolicy_bench

        offpolicy = run_offpolicy_bench(
            argparse.Namespace(
                algos=",".join(offpolicy_algos),
                parts=args.offpolicy_parts,
                envs=args.offpolicy_envs,
                learning_envs=args.offpolicy_learning_envs,
                rounds=args.repeats,
                steps=args.offpolicy_steps,
                hidden_matmul=args.offpolicy_hidden_matmul,
                seeds=1,
                quick=args.quick,
            )
        )
    return common.finish_report(
        report,
        [sb3, contrib],
        threads={"torch": 1, "OMP_NUM_THREADS": "1"},
        hyperparameters=HPARAMS,
        results=results,
        acktr_overhead=acktr,
        offpolicy=offpolicy,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run(parser.parse_args())
