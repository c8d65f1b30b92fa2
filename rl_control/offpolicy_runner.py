"""The off-policy runner: collection into a replay buffer, updates at a set update-to-data ratio.

Same public surface as :class:`rl_control.runner.Runner`: ``OffPolicyRunner(cfg, run_dir).train()``,
``OffPolicyRunner.resume(run_dir).train()``, ``save()``; ``rlctl train`` picks it through
:func:`rl_control.runner.make_runner` when ``algo.name`` is sac, td3 or tqc.

Loop, one vector step at a time (N envs):
1. act: uniform random actions for the first ``warmup_steps`` env steps, then the algorithm's exploration
   policy (recurrent actors carry their state per env and zero it at episode starts);
2. step the vector env and store the transition (terminated and truncated apart, the real final
   observation of truncated episodes) in the replay buffer; update the observation normalizer;
3. after the warm-up, run ``utd_ratio * N`` gradient updates (fractional ratios carry over) on batches
   sampled uniformly (sequences of one episode for recurrent SAC).

An iteration is ``iteration_steps`` env steps (rounded up to whole vector steps): one metrics record;
``runner.eval_every`` and ``runner.checkpoint_every`` count iterations. Checkpoints hold weights, target
networks, optimizer, temperature, normalizer, RNG states and counters after any whole vector step. Ctrl-C or
SIGTERM asks the loop to stop after the current vector step and its updates (tens of milliseconds): it saves
there and returns ``interrupted``; a second signal interrupts at once (the last checkpoint stays). The
replay buffer is written only with ``algo.save_replay`` (to ``checkpoints/replay.pt``; 1M HalfCheetah
transitions are ~93 MiB); without it a resumed run refills the buffer with its current policy before
updating again.

With ``distributed.backend: ray`` (issue 8) an iteration is one chunk instead: Ray workers step their envs
for the whole iteration with the actor broadcast at its start, the learner adds the transitions to its replay
buffer in worker order and then runs the updates the iteration's vector steps are owed (the same count as
locally); see :mod:`rl_control.distributed.ray_offpolicy`.
"""

from __future__ import annotations

import math
import signal
import time
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from rl_control.algorithms import make_offpolicy_algorithm
from rl_control.algorithms.offpolicy_base import SpaceSpec
from rl_control.allocator import keep_freed_memory_mapped
from rl_control.checkpoint import load_checkpoint, save_checkpoint
from rl_control.config import RunConfig
from rl_control.metrics import MetricsLogger
from rl_control.offpolicy_networks import OffPolicyActor, hidden_products, native_bfloat16
from rl_control.replay import ReplayBuffer
from rl_control.runner import (
    CHECKPOINT_NAME,
    CheckpointedRunner,
    TrainResult,
    episode_means,
    evaluate_policy,
    make_progress,
    new_episode_window,
    record_episodes,
    seed_everything,
)

REPLAY_NAME = "checkpoints/replay.pt"


def build_actor(cfg: RunConfig, obs_space: gym.Space, act_space: gym.Space) -> OffPolicyActor:
    """The (untrained) actor of an off-policy run, as stored under ``policy`` in its checkpoints."""
    spec = SpaceSpec.from_spaces(obs_space, act_space)
    if cfg.algo.name == "td3":
        kind = "deterministic"
    else:
        kind = "categorical" if spec.discrete else "squashed_gaussian"
    return OffPolicyActor(spec.obs_size, spec.action_size, cfg.policy, kind, spec.action_low, spec.action_high)


class OffPolicyRunner(CheckpointedRunner):
    """Drives SAC / TD3 / TQC / recurrent SAC. See the module docstring."""

    def __init__(self, cfg: RunConfig, run_dir: Path, show_progress: bool = True) -> None:
        from sim.vector import make_vector_env  # imported here: spawning workers is the runner's job

        self.cfg, self.run_dir, self.show_progress = cfg, Path(run_dir), show_progress
        torch.set_num_threads(cfg.runner.torch_threads)
        keep_freed_memory_mapped()  # fewer page faults per update (rl_control/allocator.py)
        if cfg.algo.hidden_matmul == "bfloat16" and not native_bfloat16():
            warnings.warn(
                "algo.hidden_matmul=bfloat16 on a CPU without native bfloat16 (AVX512-BF16 / AMX): the updates "
                "will be slower than with float32",
                stacklevel=2,
            )
        seed_everything(cfg.seed)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml())
        self.distributed = cfg.distributed.backend == "ray"
        if self.distributed:
            from rl_control.distributed.ray_offpolicy import RayTransitionCollector

            # Ray actors stand in for the vector env (spaces, reset, close) and collect whole iterations.
            self.venv = RayTransitionCollector(cfg, events_path=self.run_dir / "distributed_events.jsonl")
        else:
            self.venv = make_vector_env(
                cfg.env.task, cfg.env.num_envs, cfg.env.workers, cfg.env.randomization, seed=cfg.seed,
                caller_steps=cfg.env.caller_steps,
            )
        spec = SpaceSpec.from_spaces(self.venv.single_observation_space, self.venv.single_action_space)
        a, N = cfg.algo, cfg.env.num_envs
        self.algo = make_offpolicy_algorithm(spec, cfg.policy, a)
        self.policy = self.algo.actor
        if self.distributed:
            self.venv.attach(self.policy)
        self.replay = ReplayBuffer(a.buffer_size, N, spec.obs_size, () if spec.discrete else (spec.action_size,),
                                   a.gamma, a.n_step)
        self.steps_per_iter = math.ceil(a.iteration_steps / N) * N
        self.total_iterations = math.ceil(cfg.runner.total_steps / self.steps_per_iter)
        self.total_steps = self.total_iterations * self.steps_per_iter
        self.iteration, self.global_step, self.update_debt = 0, 0, 0.0
        self.np_rng = np.random.default_rng(cfg.seed)
        self.torch_gen = torch.Generator().manual_seed(cfg.seed)
        self.last_eval: dict | None = None
        self.episode_stats = new_episode_window()
        self._resumed_step: int | None = None
        self._stop_requested = False

    def _request_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {"update_debt": self.update_debt}

    def _restore_extra(self, ckpt: dict) -> None:
        self.update_debt = ckpt["update_debt"]
        replay_path = self.run_dir / REPLAY_NAME
        if self.cfg.algo.save_replay and replay_path.is_file():
            saved = load_checkpoint(replay_path)
            # A replay file newer than the checkpoint (killed between the two writes) is not used.
            if saved["global_step"] == self.global_step:
                self.replay.load_state_dict(saved["replay"])

    def save(self) -> Path:
        if self.cfg.algo.save_replay:
            save_checkpoint(self.run_dir / REPLAY_NAME,
                            {"global_step": self.global_step, "replay": self.replay.state_dict()})
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(path, self.checkpoint_payload())
        return path

    def evaluate_now(self, episodes: int | None = None) -> dict:
        return evaluate_policy(self.policy, self.cfg, episodes)

    # ---- one vector step ---------------------------------------------------------------------------------
    def _act(self, obs: np.ndarray, state: torch.Tensor | None, starts: torch.Tensor):
        obs_t = torch.from_numpy(obs)
        if self.global_step >= self.cfg.algo.warmup_steps:
            return self.algo.explore(obs_t, state, starts, self.torch_gen)
        if state is not None:  # keep the LSTM state current so exploration starts from a real history
            _, state = self.algo.explore(obs_t, state, starts, self.torch_gen)
        return self.algo.random_actions(obs.shape[0], self.np_rng), state

    def _learn(self, totals: dict[str, float], counts: dict[str, int], vector_steps: int) -> int:
        """Run the updates owed for ``vector_steps`` vector steps past the warm-up; returns how many ran."""
        a = self.cfg.algo
        if vector_steps <= 0 or not self.replay.can_sample(a.batch_size):
            return 0
        self.update_debt += a.utd_ratio * self.cfg.env.num_envs * vector_steps
        n = int(self.update_debt)
        self.update_debt -= n
        with hidden_products(a.hidden_matmul):
            for _ in range(n):
                if self.algo.uses_sequences:
                    batch = self.replay.sample_sequences(a.sequences_per_batch, a.burn_in + a.sequence_length,
                                                         a.burn_in, self.np_rng)
                else:
                    batch = self.replay.sample(a.batch_size, self.np_rng)
                for k, v in self.algo.update(batch).items():
                    totals[k] = totals.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
        return n

    def _collect_chunk(self, episode_stats: dict, term_sums: dict[str, float], dist_metrics: dict[str, float]) -> int:
        """The rest of this iteration from the Ray workers into the replay buffer; returns the vector steps
        owed updates (those ending at or past ``warmup_steps``, as :meth:`_learn` counts them locally)."""
        N, warmup = self.cfg.env.num_envs, self.cfg.algo.warmup_steps
        g0 = self.global_step
        steps = (self.steps_per_iter - g0 % self.steps_per_iter) // N
        random_steps = min(steps, max(0, math.ceil((warmup - g0) / N)))  # vector steps acting before warmup
        obs, sums, metrics = self.venv.collect(self.replay, steps, random_steps, episode_stats)
        if self.policy.normalizer is not None:
            for t in range(steps):  # one vector step at a time, as the local loop updates it
                self.policy.normalizer.update(torch.from_numpy(obs[t]))
        for name, value in sums.items():
            term_sums[name] = term_sums.get(name, 0.0) + value
        for name, value in metrics.items():  # one chunk per iteration; sums if a resume split one
            dist_metrics[name] = dist_metrics.get(name, 0.0) + value
        self.global_step += steps * N
        return sum(g0 + (j + 1) * N >= warmup for j in range(steps))

    # ---- main loop ---------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, N = self.cfg, self.cfg.env.num_envs
        logger = MetricsLogger(self.run_dir, resume_step=self._resumed_step)
        obs, _ = self.venv.reset(seed=cfg.seed + 7919 * (self.global_step // N))
        self.replay.start(obs)
        starts = torch.ones(N, dtype=torch.bool)
        state = self.policy.initial_state(N)
        episode_stats = self.episode_stats
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        term_sums: dict[str, float] = {}
        dist_metrics: dict[str, float] = {}
        t_collect = t_update = 0.0
        n_updates = n_steps = 0
        cpu0 = time.process_time()
        interrupted, final_eval, consistent = False, None, True
        self._stop_requested = False
        previous_handlers = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            with make_progress(self.show_progress) as progress:
                bar = progress.add_task("train", total=self.total_steps, completed=self.global_step, status="")
                while self.global_step < self.total_steps:
                    consistent = False  # weights, buffer and counters disagree until the step is booked
                    t0 = time.perf_counter()
                    if self.distributed:
                        learn_steps = self._collect_chunk(episode_stats, term_sums, dist_metrics)
                        n_steps += self.steps_per_iter // N
                    else:
                        actions, state = self._act(obs, state, starts)
                        next_obs, reward, terminated, truncated, info = self.venv.step(
                            self.algo.env_actions(actions))
                        self.replay.add(actions.numpy(), reward * cfg.algo.reward_scale, terminated, truncated,
                                        next_obs, info.get("final_obs"))
                        if self.policy.normalizer is not None:
                            self.policy.normalizer.update(torch.from_numpy(obs))
                        done = terminated | truncated
                        record_episodes(info, done, episode_stats)
                        for name, values in info.get("reward_terms", {}).items():
                            term_sums[name] = term_sums.get(name, 0.0) + float(np.mean(values))
                        starts = torch.from_numpy(done)
                        obs = next_obs
                        self.global_step += N
                        n_steps += 1
                        learn_steps = int(self.global_step >= cfg.algo.warmup_steps)
                    t1 = time.perf_counter()
                    n_updates += self._learn(totals, counts, learn_steps)
                    t2 = time.perf_counter()
                    consistent = True
                    t_collect, t_update = t_collect + t1 - t0, t_update + t2 - t1
                    if self._stop_requested:
                        raise KeyboardInterrupt
                    if self.show_progress and n_steps % 20 == 0:
                        progress.update(bar, completed=self.global_step)
                    if self.global_step % self.steps_per_iter:
                        continue
                    # ---- end of an iteration: metrics, evaluation, checkpoint
                    self.iteration += 1
                    elapsed = max(t_collect + t_update, 1e-9)
                    # This process's CPU time (simulation workers excluded): the benchmark's cost measure.
                    record = {"iteration": self.iteration, "time/collect_s": t_collect, "time/update_s": t_update,
                              "time/cpu_s": time.process_time() - cpu0,
                              "steps_per_s": n_steps * N / elapsed, "updates": n_updates,
                              "updates_per_s": n_updates / max(t_update, 1e-9), "replay/size": len(self.replay),
                              **{k: totals[k] / counts[k] for k in totals},
                              **{f"reward_terms/{k}": v / max(n_steps, 1) for k, v in term_sums.items()},
                              **dist_metrics}
                    record.update(episode_means(episode_stats))
                    last = self.global_step >= self.total_steps
                    if self.iteration % cfg.runner.eval_every == 0 or last:
                        final_eval = self.evaluate_now()
                        self.last_eval = final_eval
                        record.update({f"eval/{k}": v for k, v in final_eval.items() if k != "returns"})
                    logger.log(self.global_step, record)
                    if self.iteration % cfg.runner.checkpoint_every == 0 or last:
                        self.save()
                    ret = record.get("episode/return", float("nan"))
                    progress.update(bar, completed=self.global_step, status=f"return {ret:8.1f}  "
                                    f"{record['steps_per_s']:6.0f} steps/s  {record['updates_per_s']:5.0f} updates/s")
                    totals, counts, term_sums, dist_metrics = {}, {}, {}, {}
                    t_collect = t_update = 0.0
                    n_updates = n_steps = 0
                    cpu0 = time.process_time()
        except KeyboardInterrupt:
            # Any whole vector step is a consistent resume point; mid-update, the last checkpoint is.
            interrupted = True
            if consistent:
                self.save()
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            logger.close()
            self.venv.close()
        return TrainResult(self.run_dir, self.global_step, final_eval, interrupted)
