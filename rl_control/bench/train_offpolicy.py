"""Off-policy training: our SAC / TD3 / TQC vs Stable-Baselines3 SAC / TD3 and sb3-contrib TQC.

Two parts, each contender in its own fresh subprocess (one torch thread, ``OMP_NUM_THREADS=1``, same
seed), contenders interleaved A, B, A, B, ...; our runner steps its env in-process (``workers: 0``) like
SB3's DummyVecEnv, one env, one gradient update per env step:

- ``throughput``: gradient updates per CPU-second of the training process after the warm-up (random
  actions, then a few hundred updates to warm the allocators), at SB3's default network sizes (two
  256-unit ReLU layers; TQC: 5 critics x 25 quantiles, 2 dropped per critic), batch 256. At one update per
  env step this is also env-steps per CPU-second, the unit of the SB3 numbers in issue 4.
- ``learning``: the deterministic evaluation return (10 episodes) after a fixed budget of env steps, and
  the training throughput of those runs, on the envs of ``--learning-envs`` (default Pendulum-v1), same
  hyper-parameters for both contenders, per env (``LEARNING``): Pendulum-v1 with 64-unit networks, lr 1e-3,
  1000 warm-up steps, 20k steps; HalfCheetah-v5 with SB3's MuJoCo defaults (RL Zoo: 256-unit networks, lr
  3e-4, 10k warm-up steps; buffer 300k instead of 1M, still larger than the budget), 60k steps; TQC with 2
  critics x 25 quantiles on both (sb3-contrib's default; it keeps a peer run in minutes). JSON keys:
  ``results["learning"][algo]`` for Pendulum-v1 (as before), ``results["learning"]["<env>/<algo>"]`` for
  the other envs; each entry also names its ``env``.

SB3 and sb3-contrib are benchmark-only peers: ``make bench-setup`` installs them into ``.venv-bench``; run
``.venv-bench/bin/python -m rl_control.bench.train_offpolicy`` (or ``rlctl bench train-offpolicy``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

from rl_control.bench import common

ALGOS = ("sac", "td3", "tqc")
HIDDEN_MATMUL_CHOICES = ("float32", "bfloat16")
"""Our ``algo.hidden_matmul`` values (SB3 always runs float32)."""
THROUGHPUT = {
    "hidden": 256,
    "batch": 256,
    "lr": 3e-4,
    "gamma": 0.99,
    "tau": 0.005,
    "warmup": 1000,
    "buffer": 100_000,
    "n_critics": 5,
    "n_quantiles": 25,
    "drop": 2,
    "warm_updates": 200,
}
"""SB3's defaults (SAC/TD3/TQC) apart from learning_starts; ``warm_updates`` run before the timer starts."""
SEGMENT = {"sac": 1000, "td3": 1000, "tqc": 300}
"""Timed env steps (= updates) per throughput sample; TQC's peer is ~10x slower, so fewer."""
LEARNING = {
    "Pendulum-v1": {
        "hidden": 64,
        "batch": 256,
        "lr": 1e-3,
        "gamma": 0.99,
        "tau": 0.005,
        "warmup": 1000,
        "buffer": 100_000,
        "n_critics": 2,
        "n_quantiles": 25,
        "drop": 2,
        "steps": 20_000,
    },
    "HalfCheetah-v5": {
        "hidden": 256,
        "batch": 256,
        "lr": 3e-4,
        "gamma": 0.99,
        "tau": 0.005,
        "warmup": 10_000,
        "buffer": 300_000,
        "n_critics": 2,
        "n_quantiles": 25,
        "drop": 2,
        "steps": 60_000,
    },
}
"""Hyper-parameters of the fixed-budget learning runs, per env (``steps``: default budget in env steps).
HalfCheetah-v5: SB3's MuJoCo defaults (RL Zoo) except the buffer (1M there), which is still larger than the
budget, so the same training."""
LEARNING_LEGACY_KEY_ENV = "Pendulum-v1"
"""Its learning results are keyed by algo alone (the format before other envs); other envs by ``env/algo``."""
PEERS = {
    "sac": ("stable-baselines3", "stable_baselines3"),
    "td3": ("stable-baselines3", "stable_baselines3"),
    "tqc": ("sb3-contrib", "sb3_contrib"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algos", default=",".join(ALGOS), help="comma-separated: sac, td3, tqc")
    parser.add_argument("--parts", default="throughput,learning", help="comma-separated: throughput, learning")
    parser.add_argument("--envs", default="Pendulum-v1", help="throughput envs, e.g. Pendulum-v1,HalfCheetah-v5")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved throughput samples per contender")
    parser.add_argument(
        "--learning-envs", default="Pendulum-v1", help="learning envs, comma-separated: Pendulum-v1, HalfCheetah-v5"
    )
    parser.add_argument(
        "--steps", type=int, default=0, help="learning budget in env steps, all envs (default per env: 20k, 60k)"
    )
    parser.add_argument("--seeds", type=int, default=1, help="learning runs per contender (seeds 0, 1, ...)")
    parser.add_argument(
        "--hidden-matmul",
        choices=HIDDEN_MATMUL_CHOICES,
        default="float32",
        help="our algo.hidden_matmul (bfloat16 hidden-to-hidden products; SB3 stays float32)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one contender run, prints JSON
    parser.add_argument("--job", help=argparse.SUPPRESS)


# ---- one contender run, inside its own process ---------------------------------------------------------
def _segment(job: dict) -> tuple[int, int]:
    """(timed env steps, untimed warm updates) of a throughput sample."""
    if job["quick"]:
        return 50, 20
    return SEGMENT[job["algo"]], job["hp"]["warm_updates"]


def _our_overrides(algo: str, env_id: str, hp: dict, seed: int, hidden_matmul: str = "float32") -> list[str]:
    h = hp["hidden"]
    out = [
        f"algo.hidden_matmul={hidden_matmul}",
        f"seed={seed}",
        f"env.task={env_id}",
        "env.num_envs=1",
        "env.workers=0",
        "env.randomization.enabled=false",
        f"algo.name={algo}",
        f"algo.batch_size={hp['batch']}",
        f"algo.gamma={hp['gamma']}",
        f"algo.tau={hp['tau']}",
        f"algo.warmup_steps={hp['warmup']}",
        f"algo.buffer_size={hp['buffer']}",
        f"algo.actor_lr={hp['lr']}",
        f"algo.critic_lr={hp['lr']}",
        f"policy.hidden_sizes=[{h}, {h}]",
        "policy.activation=relu",
        "policy.normalize_obs=false",
        "runner.eval_every=100000",
        "runner.checkpoint_every=100000",
        "runner.eval_episodes=1",
        "runner.torch_threads=1",
    ]
    if algo in ("sac", "tqc"):
        out.append(f"algo.alpha_lr={hp['lr']}")
    if algo == "tqc":
        out += [
            f"algo.n_critics={hp['n_critics']}",
            f"algo.n_quantiles={hp['n_quantiles']}",
            f"algo.top_quantiles_to_drop={hp['drop']}",
        ]
    return out


def _ours(job: dict) -> dict:
    from rl_control.config import load_config
    from rl_control.evaluation import TorchPolicy
    from rl_control.metrics import read_metrics
    from rl_control.offpolicy_runner import OffPolicyRunner

    algo, env_id, hp = job["algo"], job["env"], job["hp"]
    overrides = _our_overrides(algo, env_id, hp, job["seed"], job.get("hidden_matmul", "float32"))
    if job["part"] == "throughput":
        seg, warm = _segment(job)
        # Iterations (one metrics record each) cut exactly at the end of the warm-up and of the warm updates.
        it = math.gcd(hp["warmup"], warm, seg)
        overrides += [f"algo.iteration_steps={it}", f"runner.total_steps={hp['warmup'] + warm + seg}"]
    else:
        overrides += [f"algo.iteration_steps={job['steps'] // 10}", f"runner.total_steps={job['steps']}"]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        runner = OffPolicyRunner(cfg, run_dir, show_progress=False)
        cpu0 = time.process_time()
        runner.train()
        cpu = time.process_time() - cpu0
        records = read_metrics(run_dir)
        if job["part"] == "throughput":
            timed = [r for r in records if r["step"] > hp["warmup"] + warm]
            cpu_s = sum(r["time/cpu_s"] for r in timed)
            wall_s = sum(r["time/collect_s"] + r["time/update_s"] for r in timed)
            updates = sum(r["updates"] for r in timed)
            return {"updates": updates, "steps": len(timed), "cpu_s": cpu_s, "wall_s": wall_s}
        train_cpu = sum(r["time/cpu_s"] for r in records)
        train_wall = sum(r["time/collect_s"] + r["time/update_s"] for r in records)
        updates = sum(r["updates"] for r in records)
        return {
            "updates": updates,
            "steps": runner.global_step,
            "cpu_s": train_cpu,
            "wall_s": train_wall,
            "process_cpu_s": cpu,
            "eval": _evaluate(TorchPolicy(runner.policy), env_id),
        }


class _SB3Policy:
    """Adapter from an SB3 model to our evaluation protocol (reset / act), deterministic actions."""

    def __init__(self, model) -> None:
        self.model = model

    def reset(self) -> None:
        pass

    def act(self, obs):
        return self.model.predict(obs, deterministic=True)[0]


def _sb3_model(algo: str, env_id: str, hp: dict, seed: int):
    import numpy as np
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from sim.tasks import make_env

    venv = DummyVecEnv([lambda: make_env(env_id)])
    kwargs = dict(
        learning_rate=hp["lr"],
        buffer_size=hp["buffer"],
        learning_starts=hp["warmup"],
        batch_size=hp["batch"],
        tau=hp["tau"],
        gamma=hp["gamma"],
        train_freq=1,
        gradient_steps=1,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    arch = {"net_arch": [hp["hidden"], hp["hidden"]], "activation_fn": torch.nn.ReLU}
    if algo == "sac":
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", venv, policy_kwargs=arch, **kwargs)
    if algo == "td3":
        from stable_baselines3 import TD3
        from stable_baselines3.common.noise import NormalActionNoise

        n = venv.action_space.shape[0]
        # SB3 adds this noise to the action scaled to [-1, 1], like our exploration_noise.
        noise = NormalActionNoise(np.zeros(n), 0.1 * np.ones(n))
        return TD3(
            "MlpPolicy",
            venv,
            policy_kwargs=arch,
            action_noise=noise,
            policy_delay=2,
            target_policy_noise=0.2,
            target_noise_clip=0.5,
            **kwargs,
        )
    from sb3_contrib import TQC

    return TQC(
        "MlpPolicy",
        venv,
        top_quantiles_to_drop_per_net=hp["drop"],
        policy_kwargs={**arch, "n_critics": hp["n_critics"], "n_quantiles": hp["n_quantiles"]},
        **kwargs,
    )


def _sb3(job: dict) -> dict:
    algo, env_id, hp = job["algo"], job["env"], job["hp"]
    model = _sb3_model(algo, env_id, hp, job["seed"])
    if job["part"] == "throughput":
        seg, warm = _segment(job)
        model.learn(total_timesteps=hp["warmup"] + warm)
        updates0 = model._n_updates
        cpu0, wall0 = time.process_time(), time.perf_counter()
        model.learn(total_timesteps=seg, reset_num_timesteps=False)
        return {
            "updates": model._n_updates - updates0,
            "steps": seg,
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.perf_counter() - wall0,
        }
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model.learn(total_timesteps=job["steps"])
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "updates": int(model._n_updates),
        "steps": int(model.num_timesteps),
        "cpu_s": cpu,
        "wall_s": wall,
        "process_cpu_s": cpu,
        "eval": _evaluate(_SB3Policy(model), env_id),
    }


def _evaluate(policy, env_id: str) -> float:
    from rl_control.evaluation import evaluate

    return evaluate(policy, env_id, episodes=10, seed=555).mean_return


def _worker_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    job = json.loads(args.job)
    out = _ours(job) if args.worker == "ours" else _sb3(job)
    print("RESULT " + json.dumps(out))


# ---- the benchmark driver ----------------------------------------------------------------------------------
def _spawn(worker: str, job: dict) -> dict:
    cmd = [sys.executable, "-m", "rl_control.bench.train_offpolicy", "--worker", worker, "--job", json.dumps(job)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"benchmark worker {worker} {job} failed:\n{proc.stderr[-3000:]}")


def _summary(runs: list[dict], key: str) -> dict:
    rates = common.Timing([r[key] / r["cpu_s"] for r in runs])
    walls = common.Timing([r[key] / r["wall_s"] for r in runs])
    out = {f"{key}_per_cpu_s": rates.to_dict(), f"{key}_per_wall_s": walls.to_dict(), "runs": runs}
    if "eval" in runs[0]:
        out["returns"] = [r["eval"] for r in runs]
        out["return_median"] = statistics.median(out["returns"])
    return out


def run_offpolicy_bench(args: argparse.Namespace) -> dict:
    """Run the benchmark (see the module docstring); returns the JSON report and prints the tables."""
    report = common.start_report("bench train-offpolicy")
    algos = [a for a in args.algos.split(",") if a]
    parts = [p for p in args.parts.split(",") if p]
    peers = {a: common.peer_status(*PEERS[a]) for a in algos}
    hidden_matmul = getattr(args, "hidden_matmul", "float32")
    results: dict = {"throughput": {}, "learning": {}, "ours_hidden_matmul": hidden_matmul}
    rows_t, rows_l = [], []
    if "throughput" in parts:
        for env_id in args.envs.split(","):
            for algo in algos:
                job = {
                    "algo": algo,
                    "env": env_id,
                    "hp": THROUGHPUT,
                    "seed": 0,
                    "part": "throughput",
                    "quick": bool(args.quick),
                    "hidden_matmul": hidden_matmul,
                }
                contenders = ["ours"] + (["sb3"] if peers[algo].available else [])
                runs: dict[str, list[dict]] = {c: [] for c in contenders}
                for _ in range(1 if args.quick else args.rounds):
                    for c in contenders:  # interleaved: ours, sb3, ours, sb3, ...
                        runs[c].append(_spawn(c, job))
                res = {c: _summary(r, "updates") for c, r in runs.items()}
                if "sb3" in res:
                    ratio = common.ratio(
                        res["ours"]["updates_per_cpu_s"]["median"], res["sb3"]["updates_per_cpu_s"]["median"]
                    )
                    res["ratio_ours_over_sb3"] = ratio
                else:
                    res["sb3"] = {"unavailable": peers[algo].error}
                results["throughput"][f"{env_id}/{algo}"] = res
                rows_t.append(_throughput_row(env_id, algo, res))
                print("throughput", " | ".join(rows_t[-1]), flush=True)  # progress; a later failure keeps it
    if "learning" in parts:
        learning_envs = [e for e in getattr(args, "learning_envs", LEARNING_LEGACY_KEY_ENV).split(",") if e]
        unknown = sorted(set(learning_envs) - set(LEARNING))
        if unknown:
            raise SystemExit(
                f"bench train-offpolicy: no learning hyper-parameters for {unknown}; known: {list(LEARNING)}"
            )
        for env_id in learning_envs:
            hp = LEARNING[env_id]
            steps = 3000 if args.quick else (args.steps or hp["steps"])
            if args.quick:  # a few hundred updates, so that the quick check also exercises learning
                hp = {**hp, "warmup": min(hp["warmup"], 1000)}
            for algo in algos:
                contenders = ["ours"] + (["sb3"] if peers[algo].available else [])
                runs = {c: [] for c in contenders}
                for seed in range(1 if args.quick else args.seeds):
                    job = {
                        "algo": algo,
                        "env": env_id,
                        "hp": hp,
                        "seed": seed,
                        "part": "learning",
                        "steps": steps,
                        "quick": bool(args.quick),
                        "hidden_matmul": hidden_matmul,
                    }
                    for c in contenders:
                        runs[c].append(_spawn(c, job))
                res = {c: _summary(r, "updates") for c, r in runs.items()}
                if "sb3" not in res:
                    res["sb3"] = {"unavailable": peers[algo].error}
                key = algo if env_id == LEARNING_LEGACY_KEY_ENV else f"{env_id}/{algo}"
                results["learning"][key] = {"env": env_id, "steps": steps, "hyperparameters": hp, **res}
                rows_l.append(_learning_row(env_id, algo, steps, hp, res))
                print("learning", " | ".join(rows_l[-1]), flush=True)
    if rows_t:
        common.print_table(
            "bench train-offpolicy: gradient updates per CPU-second (one update per env step, "
            f"256x256 nets, batch 256, 1 torch thread; ours: {hidden_matmul} hidden products)",
            ["env", "algo", "ours", "SB3", "ours/SB3"],
            rows_t,
        )
    if rows_l:
        common.print_table(
            "bench train-offpolicy: return after a fixed budget (deterministic, 10 episodes), updates per "
            f"CPU-second of those runs (ours: {hidden_matmul} hidden products)",
            [
                "env",
                "algo",
                "nets",
                "steps",
                "ours return",
                "SB3 return",
                "ours upd/CPU-s",
                "SB3 upd/CPU-s",
                "ours/SB3",
            ],
            rows_l,
        )
    all_peers = list({p.name: p for p in peers.values()}.values())
    return common.finish_report(
        report,
        all_peers,
        threads={"torch": 1, "OMP_NUM_THREADS": "1"},
        hyperparameters={"throughput": THROUGHPUT, "segments": SEGMENT, "learning": LEARNING},
        results=results,
    )


def _rate(res: dict, who: str) -> float | None:
    entry = res.get(who, {})
    return entry["updates_per_cpu_s"]["median"] if "updates_per_cpu_s" in entry else None


def _throughput_row(env_id: str, algo: str, res: dict) -> list[str]:
    ours, peer = res["ours"]["updates_per_cpu_s"], res["sb3"].get("updates_per_cpu_s")
    return [
        env_id,
        algo,
        _fmt(ours),
        _fmt(peer) if peer else "unavailable",
        common.fmt_ratio(common.ratio(_rate(res, "ours"), _rate(res, "sb3"))),
    ]


def _learning_row(env_id: str, algo: str, steps: int, hp: dict, res: dict) -> list[str]:
    peer = res["sb3"]
    return [
        env_id,
        algo,
        f"{hp['hidden']}x{hp['hidden']}",
        f"{steps:,}",
        f"{res['ours']['return_median']:.1f}",
        f"{peer['return_median']:.1f}" if "return_median" in peer else "unavailable",
        _fmt(res["ours"]["updates_per_cpu_s"]),
        _fmt(peer.get("updates_per_cpu_s")),
        common.fmt_ratio(common.ratio(_rate(res, "ours"), _rate(res, "sb3"))),
    ]


def _fmt(timing: dict | None) -> str:
    if not timing:
        return "-"
    spread = timing["spread"] * 50
    return f"{timing['median']:.1f} ±{spread:.0f}%"


def run(args: argparse.Namespace) -> dict:
    """Entry point of ``rlctl bench train-offpolicy``."""
    if args.worker:
        _worker_main(args)
        return {}
    return run_offpolicy_bench(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the command works")
    cli_args = parser.parse_args()
    result = run(cli_args)
    if cli_args.json and result:
        with open(cli_args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, default=float)
        print(f"wrote {cli_args.json}")
