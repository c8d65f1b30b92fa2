"""The training runner: owns the vector env, the policy, the algorithm and the logger.

One iteration = collect ``rollout_steps`` on every env, compute GAE, update, log; evaluation and
checkpoints every few iterations. A run folder holds everything of one run (resolved config, metrics,
TensorBoard events, checkpoints, exported policy, plots, report).

Resume restores weights, optimizer, normalizer, RNG states, step counters and the window of recent
episodes behind the logged episode means. The simulator's in-flight episodes are not saved: on resume the
envs start fresh episodes, seeded from the run seed and the iteration, so the curve continues at the same
step without a gap or a repeat (but is not bit-identical to an uninterrupted run).
"""

from __future__ import annotations

import random
import signal
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import gymnasium as gym
import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rl_control.algorithms import is_off_policy, make_algorithm
from rl_control.allocator import keep_freed_memory_mapped
from rl_control.buffers import RolloutBuffer
from rl_control.checkpoint import load_checkpoint, save_checkpoint
from rl_control.config import RunConfig, load_config
from rl_control.evaluation import TorchPolicy, evaluate
from rl_control.metrics import MetricsLogger
from rl_control.networks import ActorCritic
from rl_control.normalizer import RewardScaler
from rl_control.rollout_policy import numpy_rollout_policy, policy_step

CHECKPOINT_NAME = "checkpoints/last.pt"


def new_run_dir(root: str | Path, cfg: RunConfig, name: str | None = None) -> Path:
    """A fresh folder under ``root``; never reuses an existing one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / (name or f"{stamp}_{cfg.env.task}_{cfg.algo.name}")
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}_{k}")
    path.mkdir(parents=True)
    return path


def build_policy(cfg: RunConfig, obs_space: gym.Space, act_space: gym.Space) -> ActorCritic:
    if isinstance(act_space, gym.spaces.Discrete):
        return ActorCritic(obs_space.shape[0], int(act_space.n), cfg.policy, discrete=True)
    if not isinstance(act_space, gym.spaces.Box):
        raise ValueError(f"unsupported action space {act_space}")
    return ActorCritic(
        obs_space.shape[0], act_space.shape[0], cfg.policy,
        action_low=torch.as_tensor(act_space.low), action_high=torch.as_tensor(act_space.high),
    )


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate_policy(policy: torch.nn.Module, cfg: RunConfig, episodes: int | None = None) -> dict:
    """Deterministic evaluation of a torch actor on the run's task (eval mode during the episodes)."""
    policy.eval()
    result = evaluate(
        TorchPolicy(policy), cfg.env.task, episodes or cfg.runner.eval_episodes,
        seed=10_000 + cfg.seed, randomization=cfg.env.randomization,
    )
    policy.train()
    return result.as_dict()


EPISODE_WINDOW = 50  # episodes behind the logged episode/return, length and success means


def new_episode_window() -> dict[str, deque]:
    """The rolling window of finished episodes that the logged episode means average over."""
    return {key: deque(maxlen=EPISODE_WINDOW) for key in ("return", "length", "success")}


def record_episodes(info: dict, done: np.ndarray, episode_stats: dict[str, deque]) -> None:
    """Append the return, length and success of every episode that ended this step (vector-env infos), and
    the randomization the vector env sampled for the episodes it started in their place."""
    ended = np.nonzero(done)[0]
    for i in ended:
        episode_stats["return"].append(float(info["episode_return"][i]))
        episode_stats["length"].append(int(info["episode_length"][i]))
        success = float(info["is_success"][i]) if "is_success" in info else float("nan")
        if np.isfinite(success):
            episode_stats["success"].append(success)
    if not ended.size:
        return
    for name, values in info.get("randomization", {}).items():
        window = episode_stats.setdefault(f"randomization/{name}", deque(maxlen=EPISODE_WINDOW))
        window.extend(float(values[i]) for i in ended if np.isfinite(values[i]))


def episode_means(episode_stats: dict[str, deque]) -> dict[str, float]:
    """What a metrics record logs from the window: episode/return, length, success, randomization/<name>."""
    means: dict[str, float] = {}
    if episode_stats["return"]:
        means["episode/return"] = float(np.mean(episode_stats["return"]))
        means["episode/length"] = float(np.mean(episode_stats["length"]))
    if episode_stats["success"]:
        means["episode/success"] = float(np.mean(episode_stats["success"]))
    for key, values in episode_stats.items():
        if key.startswith("randomization/") and values:
            means[key] = float(np.mean(values))
    return means


def merge_episode_windows(episode_stats: dict[str, deque], other: dict) -> None:
    """Extend ``episode_stats`` by another window's entries (a remote worker's, or a checkpoint's lists)."""
    for key, values in other.items():
        episode_stats.setdefault(key, deque(maxlen=EPISODE_WINDOW)).extend(values)


def make_progress(show: bool) -> Progress:
    """The training progress bar (steps, elapsed, ETA, a status text field)."""
    return Progress(
        TextColumn("[bold]train[/] {task.fields[status]}"), BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} steps"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not show, transient=False,
    )


class _BufferViews:
    """Numpy views of a rollout buffer's per-step fields: a numpy row write costs far less than torch's."""

    def __init__(self, buffer: RolloutBuffer) -> None:
        for name in ("obs", "actions", "log_probs", "values", "out", "starts", "rewards", "terminated", "truncated"):
            setattr(self, name, getattr(buffer, name).numpy())


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    final_eval: dict | None
    interrupted: bool


class CheckpointedRunner:
    """Checkpoint contents and resume, shared by both runners: weights, algorithm state (optimizers
    included), counters, every random generator (numpy's, the collection generator, torch's global one,
    Python's), the window of recent episodes behind the logged episode means, the last evaluation and the
    config. A runner adds its own entries in ``_extra_state`` and reads them back in ``_restore_extra``."""

    policy: torch.nn.Module
    algo: Any
    cfg: RunConfig
    iteration: int
    global_step: int
    np_rng: np.random.Generator
    torch_gen: torch.Generator
    last_eval: dict | None
    episode_stats: dict[str, deque]
    _resumed_step: int | None

    @classmethod
    def resume(cls, run_dir: str | Path, show_progress: bool = True) -> Self:
        run_dir = Path(run_dir)
        ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
        runner = cls(load_config(run_dir / "config.yaml"), run_dir, show_progress)
        runner._restore(ckpt)
        return runner

    def checkpoint_payload(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "algo": self.algo.state_dict(),
            "iteration": self.iteration,
            "global_step": self.global_step,
            "np_rng": self.np_rng.bit_generator.state,
            "torch_gen": self.torch_gen.get_state(),
            "torch_global": torch.get_rng_state(),
            "py_random": random.getstate(),
            "last_eval": self.last_eval,
            "episode_window": {key: list(values) for key, values in self.episode_stats.items()},
            **self._extra_state(),
            "config": self.cfg.model_dump(mode="json"),
            "config_hash": self.cfg.digest(),
        }

    def _restore(self, ckpt: dict) -> None:
        self.policy.load_state_dict(ckpt["policy"])
        self.algo.load_state_dict(ckpt["algo"])
        self.iteration, self.global_step = ckpt["iteration"], ckpt["global_step"]
        self.np_rng.bit_generator.state = ckpt["np_rng"]
        self.torch_gen.set_state(ckpt["torch_gen"])
        torch.set_rng_state(ckpt["torch_global"])
        random.setstate(ckpt["py_random"])
        self.last_eval = ckpt.get("last_eval")
        merge_episode_windows(self.episode_stats, ckpt.get("episode_window", {}))  # absent in older checkpoints
        self._restore_extra(ckpt)
        self._resumed_step = self.global_step

    def _extra_state(self) -> dict:
        return {}

    def _restore_extra(self, ckpt: dict) -> None:
        del ckpt


class Runner(CheckpointedRunner):
    """Drives an on-policy algorithm. ``Runner(cfg, run_dir).train()``; ``Runner.resume(run_dir).train()``."""

    def __init__(self, cfg: RunConfig, run_dir: Path, show_progress: bool = True) -> None:
        from sim.vector import make_vector_env  # imported here: spawning workers is the runner's job

        self.cfg, self.run_dir, self.show_progress = cfg, Path(run_dir), show_progress
        torch.set_num_threads(cfg.runner.torch_threads)
        keep_freed_memory_mapped()  # fewer page faults per update (rl_control/allocator.py)
        self._seed_everything(cfg.seed)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        if cfg.distributed.backend == "ray":
            from rl_control.distributed import RayRolloutCollector

            # Ray actors stand in for the vector env (spaces, reset, close) and collect through
            # ``collect``, which has the signature of ``_collect`` (issue 8).
            self.venv = RayRolloutCollector(cfg, events_path=self.run_dir / "distributed_events.jsonl")
        else:
            self.venv = make_vector_env(
                cfg.env.task, cfg.env.num_envs, cfg.env.workers, cfg.env.randomization, seed=cfg.seed,
                caller_steps=cfg.env.caller_steps,
            )
        self.policy = build_policy(cfg, self.venv.single_observation_space, self.venv.single_action_space)
        a = cfg.algo
        self.steps_per_iter = a.rollout_steps * cfg.env.num_envs
        self.total_iterations = -(-cfg.runner.total_steps // self.steps_per_iter)
        self.algo = make_algorithm(self.policy, a, self.total_iterations)
        self.iteration, self.global_step = 0, 0
        self.np_rng = np.random.default_rng(cfg.seed)
        self.torch_gen = torch.Generator().manual_seed(cfg.seed)
        self.last_eval: dict | None = None
        self.episode_stats = new_episode_window()
        self.reward_scaler = RewardScaler(cfg.env.num_envs, a.gamma) if a.normalize_rewards else None
        self.collect = self._collect
        if cfg.distributed.backend == "ray":
            self.venv.attach(self.policy, self.reward_scaler)
            self.collect = self.venv.collect
        self._resumed_step: int | None = None

    # ---- construction helpers --------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        seed_everything(seed)

    def _extra_state(self) -> dict:
        return {"reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler is not None else None}

    def _restore_extra(self, ckpt: dict) -> None:
        if self.reward_scaler is not None and ckpt.get("reward_scaler") is not None:
            self.reward_scaler.load_state_dict(ckpt["reward_scaler"])

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.checkpoint_payload())
        return path

    # ---- collection ----------------------------------------------------------------------------------
    def _collect(self, buffer: RolloutBuffer, obs: np.ndarray, starts, state, episode_stats):
        """Fill ``buffer`` with ``buffer.T`` steps of every env; returns (obs, starts, state, reward-term means).

        Per-step work is kept in numpy (buffer writes go through numpy views of the buffer's tensors); the
        policy runs through its numpy twin when it has one (feed-forward Gaussian), else through ``act``.
        """
        policy, venv = self.policy, self.venv
        twin = numpy_rollout_policy(policy, snapshot=True)  # weights are fixed during collection
        views = _BufferViews(buffer)
        # The runner's initial starts are a torch tensor; numpy >= 2 warns when np.array converts one directly.
        starts = starts.numpy().astype(bool) if isinstance(starts, torch.Tensor) else np.array(starts, dtype=bool)
        low, high = policy.action_low.numpy(), policy.action_high.numpy()
        reward_scale = self.cfg.algo.reward_scale
        term_sums: dict[str, np.ndarray] = {}
        for t in range(buffer.T):
            action, log_prob, value, out, start_state, state = policy_step(
                policy, twin, obs, state, starts, self.torch_gen
            )
            if start_state is not None:
                buffer.states[t] = start_state
            env_action = action if policy.discrete else np.minimum(np.maximum(action, low), high)
            views.obs[t], views.actions[t], views.log_probs[t] = obs, action, log_prob
            views.values[t], views.out[t], views.starts[t] = value, out, starts
            obs, reward, terminated, truncated, info = venv.step(env_action)
            done = terminated | truncated
            rewards = reward.astype(np.float32) * np.float32(reward_scale)
            if self.reward_scaler is not None:
                rewards = self.reward_scaler(torch.from_numpy(rewards), torch.from_numpy(done)).numpy()
            views.rewards[t], views.terminated[t], views.truncated[t] = rewards, terminated, truncated
            if truncated.any():
                self._bootstrap_truncated(buffer, t, truncated, info["final_obs"], state)
            if done.any():
                record_episodes(info, done, episode_stats)
            for name, values in info.get("reward_terms", {}).items():
                term_sums[name] = term_sums.get(name, 0.0) + values  # per-env sums; averaged once at the end
            starts = done
        with torch.no_grad():
            if state is not None:
                state = state * torch.from_numpy(~starts).float().view(1, 1, -1, 1)
            last_values = policy.value_only(torch.from_numpy(obs), state)
        buffer.compute_returns(last_values, self.cfg.algo.gamma, self.cfg.algo.gae_lambda)
        term_means = {f"reward_terms/{k}": float(np.mean(v, dtype=np.float64)) / buffer.T for k, v in term_sums.items()}
        return obs, torch.from_numpy(starts), state, term_means

    def _bootstrap_truncated(self, buffer: RolloutBuffer, t: int, truncated: np.ndarray, final_obs: np.ndarray,
                             state: torch.Tensor | None) -> None:
        """V of the real final observation of envs cut at step t (their next row is a new episode)."""
        idx = np.nonzero(truncated)[0]
        sub_state = None if state is None else state[:, :, torch.from_numpy(idx)]
        with torch.no_grad():
            values = self.policy.value_only(torch.from_numpy(final_obs[idx]), sub_state)
        buffer.final_values[t, torch.from_numpy(idx)] = values

    # ---- main loop -----------------------------------------------------------------------------------
    def evaluate_now(self, episodes: int | None = None) -> dict:
        return evaluate_policy(self.policy, self.cfg, episodes)

    def train(self) -> TrainResult:
        cfg = self.cfg
        logger = MetricsLogger(self.run_dir, resume_step=self._resumed_step)
        buffer = RolloutBuffer(
            cfg.algo.rollout_steps, cfg.env.num_envs, self.policy.obs_size,
            () if self.policy.discrete else (self.policy.action_size,), self.policy.action_size,
            self.policy.state_shape_per_env,
        )
        obs, _ = self.venv.reset(seed=cfg.seed + 7919 * self.iteration)
        starts = torch.ones(cfg.env.num_envs, dtype=torch.bool)
        state = self.policy.initial_state(cfg.env.num_envs)
        episode_stats = self.episode_stats
        interrupted, final_eval, consistent = False, None, True
        previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        progress = make_progress(self.show_progress)
        try:
            with progress:
                bar = progress.add_task("train", total=cfg.runner.total_steps, completed=self.global_step, status="")
                while self.iteration < self.total_iterations:
                    consistent = False  # weights and counters disagree until the iteration is booked
                    t0 = time.perf_counter()
                    obs, starts, state, term_means = self.collect(buffer, obs, starts, state, episode_stats)
                    t1 = time.perf_counter()
                    stats = self.algo.update(buffer, self.np_rng)
                    if self.policy.normalizer is not None:
                        # After the update, so the update sees the same normalization as collection did.
                        self.policy.normalizer.update(buffer.obs)
                    t2 = time.perf_counter()
                    self.iteration += 1
                    self.global_step += self.steps_per_iter
                    consistent = True
                    record = {"iteration": self.iteration, "time/collect_s": t1 - t0, "time/update_s": t2 - t1,
                              "steps_per_s": self.steps_per_iter / (t2 - t0), **stats, **term_means}
                    record.update(episode_means(episode_stats))
                    last = self.iteration == self.total_iterations
                    if self.iteration % cfg.runner.eval_every == 0 or last:
                        final_eval = self.evaluate_now()
                        self.last_eval = final_eval
                        record.update({f"eval/{k}": v for k, v in final_eval.items() if k != "returns"})
                    logger.log(self.global_step, record)
                    if self.iteration % cfg.runner.checkpoint_every == 0 or last:
                        self.save()
                    ret = record.get("episode/return", float("nan"))
                    progress.update(bar, completed=self.global_step,
                                    status=f"return {ret:8.1f}  {record['steps_per_s']:6.0f} steps/s")
        except KeyboardInterrupt:
            # Save only a consistent state; mid-update, the last periodic checkpoint is the resume point.
            interrupted = True
            if consistent:
                self.save()
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            logger.close()
            self.venv.close()
        return TrainResult(self.run_dir, self.global_step, final_eval, interrupted)


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def make_runner(cfg: RunConfig, run_dir: str | Path, show_progress: bool = True):
    """The runner for ``cfg.algo.name``: :class:`Runner` (on-policy) or ``OffPolicyRunner`` (replay)."""
    if is_off_policy(cfg.algo.name):
        from rl_control.offpolicy_runner import OffPolicyRunner

        return OffPolicyRunner(cfg, Path(run_dir), show_progress)
    return Runner(cfg, Path(run_dir), show_progress)


def resume_runner(run_dir: str | Path, show_progress: bool = True):
    """Resume a run folder with the runner its config's algorithm needs."""
    cfg = load_config(Path(run_dir) / "config.yaml")
    if is_off_policy(cfg.algo.name):
        from rl_control.offpolicy_runner import OffPolicyRunner

        return OffPolicyRunner.resume(run_dir, show_progress)
    return Runner.resume(run_dir, show_progress)


def load_trained_policy(run_dir: str | Path) -> tuple[RunConfig, ActorCritic, dict]:
    """(config, policy with trained weights, checkpoint) of a run folder."""
    from sim.tasks import make_env

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    env = make_env(cfg.env.task)
    if is_off_policy(cfg.algo.name):
        from rl_control.offpolicy_runner import build_actor

        policy = build_actor(cfg, env.observation_space, env.action_space)
    else:
        policy = build_policy(cfg, env.observation_space, env.action_space)
    env.close()
    policy.load_state_dict(ckpt["policy"])
    policy.eval()
    return cfg, policy, ckpt
