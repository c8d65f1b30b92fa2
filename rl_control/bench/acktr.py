"""ACKTR's per-update cost vs a first-order (Adam) update of the same network on the same batch.

The ACKTR paper (Wu et al. 2017, section 5.3) claims a K-FAC update costs only 10-25% more than a
first-order one. Contenders, each one whole update of one actor-critic on one rollout batch:

- ``adam``: the A2C-style first-order update ACKTR replaces: minibatch assembly, advantage
  normalization, forward, policy-gradient + value loss, backward, one Adam step;
- ``kfac_k1``: the same code with K-FAC for actor and critic instead of Adam: plus the statistics pass
  (sampled-action and sampled-value Fisher losses, one extra backward to the layer outputs), the factor
  running averages, eigendecompositions at every update (``inverse_every=1``, our ACKTR default), the
  preconditioning and the KL clip;
- ``kfac_k10``: the same with ``inverse_every=10``, the amortized setting of the paper;
- ``acktr_default``: :meth:`ACKTR.update` with our default config, i.e. what one training iteration
  really spends: four critic steps (each after the first with its own statistics pass) and a logging forward pass
  that measures the KL and value error after the step.
Contenders run interleaved after a warm-up (see ../shared/BENCHMARKS.md); one torch thread.
"""

from __future__ import annotations

from typing import Any

from rl_control.bench import common

OBS_SIZE, ACTION_SIZE = 17, 6  # HalfCheetah-v5's sizes
SIZES = {"mlp64": (64, 64), "mlp256": (256, 256)}
BATCH = 2048  # 8 envs x 256 steps, the default rollout


def _buffer(policy, batch: int, seed: int):
    """A flat rollout buffer of ``batch`` samples collected by ``policy`` on random observations."""
    import torch

    from rl_control.buffers import RolloutBuffer

    gen = torch.Generator().manual_seed(seed)
    T, N = batch // 8, 8
    buf = RolloutBuffer(T, N, OBS_SIZE, (ACTION_SIZE,), ACTION_SIZE, None)
    obs = torch.randn(T, N, OBS_SIZE, generator=gen)
    for t in range(T):
        action, log_prob, value, out, _ = policy.act(obs[t], None, None, gen)
        buf.obs[t], buf.actions[t], buf.log_probs[t] = obs[t], action, log_prob
        buf.values[t], buf.out[t] = value, out
    buf.rewards = torch.randn(T, N, generator=gen)
    buf.compute_returns(torch.zeros(N), 0.99, 0.95)
    return buf


def _contenders(hidden: tuple[int, ...], batch: int, seconds: float) -> dict[str, Any]:
    import numpy as np
    import torch

    from rl_control import losses
    from rl_control.algorithms.acktr import ACKTR, sampled_policy_fisher_loss, sampled_value_fisher_loss
    from rl_control.config import ACKTRConfig, PolicyConfig
    from rl_control.networks import ActorCritic
    from rl_control.optim import KFAC

    def policy() -> ActorCritic:
        torch.manual_seed(0)
        return ActorCritic(OBS_SIZE, ACTION_SIZE, PolicyConfig(hidden_sizes=hidden))

    rng = np.random.default_rng(0)

    def first_order_or_kfac(kind: str, inverse_every: int = 1):
        """The same A2C update code; only the optimizer differs (plus K-FAC's statistics pass)."""
        p = policy()
        buf = _buffer(p, batch, seed=1)
        cfg = ACKTRConfig(inverse_every=inverse_every)
        if kind == "adam":
            adam = torch.optim.Adam(p.parameters(), lr=3e-4, eps=1e-5)
        else:
            kw = {"damping": cfg.damping, "stat_decay": cfg.stat_decay, "inverse_every": inverse_every}
            actor = KFAC(p, p.actor_parameters(), cfg.lr, cfg.kl_clip, **kw)
            critic = KFAC(p, p.critic_parameters(), cfg.vf_lr, cfg.vf_kl_clip, **kw)

        def update() -> None:
            mb = next(buf.minibatches(1, 1, rng))
            adv = losses.normalize_advantages(mb.advantages, mb.mask)
            if kind == "adam":
                out, values, _ = p(mb.obs)
            else:
                with actor.capture(), critic.capture():
                    out, values, _ = p(mb.obs)
                actor.update_factors(sampled_policy_fisher_loss(p, out, mb.mask))
                critic.update_factors(sampled_value_fisher_loss(values, mb.mask))
            log_prob, _ = p.distribution(out, mb.actions)
            loss = -losses.masked_mean(torch.exp(log_prob - mb.log_probs) * adv, mb.mask)
            loss = loss + losses.value_loss(values, mb.values, mb.returns, mb.mask)
            if kind == "adam":
                adam.zero_grad(set_to_none=True)
                loss.backward()
                adam.step()
            else:
                actor.zero_grad()
                critic.zero_grad()
                loss.backward()
                actor.step()
                critic.step()

        return update

    def acktr_iteration():
        p = policy()
        algo = ACKTR(p, ACKTRConfig(), total_iterations=1)
        buf = _buffer(p, batch, seed=1)
        return lambda: algo.update(buf, rng)

    fns = {
        "adam": first_order_or_kfac("adam"),
        "kfac_k1": first_order_or_kfac("kfac", inverse_every=1),
        "kfac_k10": first_order_or_kfac("kfac", inverse_every=10),
        "acktr_default": acktr_iteration(),
    }
    # Each measurement: updates per second over ``seconds`` (at least 3 updates).
    return {name: (lambda fn=fn: common.timed_rate(fn, 1, seconds)) for name, fn in fns.items()}


def run_acktr_overhead(quick: bool, show: bool = True) -> dict[str, Any]:
    """Measure ms per update of each contender per network size; print a table; return the JSON payload.

    Args:
        quick: smoke mode: the small network only, a smaller batch, 2 short rounds (seconds in total).
        show: print the table.

    Returns:
        The report envelope (command, versions, CPU, load) with ``settings``, ``results`` (per network:
        each contender's ms/update median and spread, and the ratios to Adam) and ``lines`` (summary).
    """
    import torch

    report = common.start_report("acktr_overhead")
    threads = common.set_single_threaded_libraries()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sizes = {"mlp64": SIZES["mlp64"]} if quick else SIZES
    batch = 512 if quick else BATCH
    rounds, seconds, warmup = (2, 0.1, 1) if quick else (7, 1.0, 1)
    results, table, lines = {}, [], []
    try:
        for name, hidden in sizes.items():
            timings = common.interleaved(_contenders(hidden, batch, seconds), rounds=rounds, warmup=warmup)
            ms = {k: common.Timing([1000.0 / r for r in t.samples]) for k, t in timings.items()}
            ratios = {k: ms[k].median / ms["adam"].median for k in ms if k != "adam"}
            results[name] = {"hidden": list(hidden), "ms_per_update": {k: v.to_dict() for k, v in ms.items()},
                             "ratio_to_adam": ratios}
            table.append([name, *(f"{ms[k].median:.2f} ±{ms[k].spread * 50:.0f}%" for k in ms),
                          *(f"{ratios[k]:.2f}" for k in ratios)])
            lines.append(
                f"{name}: K-FAC update / Adam update = {ratios['kfac_k10']:.2f} (K=10), {ratios['kfac_k1']:.2f} "
                f"(K=1); one default ACKTR iteration = {ratios['acktr_default']:.2f}x an Adam update "
                f"(paper's claim: 1.10-1.25)"
            )
    finally:
        torch.set_num_threads(previous_threads)
    if show:
        columns = ["network", "adam ms", "kfac K=1 ms", "kfac K=10 ms", "acktr default ms",
                   "K=1/adam", "K=10/adam", "default/adam"]  # fmt: skip
        common.print_table(
            f"ms per update, batch {batch}, obs {OBS_SIZE}, actions {ACTION_SIZE} (median ±half range, "
            f"{rounds} interleaved rounds, 1 torch thread)", columns, table,
        )
        for line in lines:
            print(line)
    return common.finish_report(
        report, [],
        settings={"batch": batch, "obs_size": OBS_SIZE, "action_size": ACTION_SIZE, "rounds": rounds,
                  "seconds": seconds, "quick": quick, "torch_threads": 1, "thread_env_set": threads},
        results=results, lines=lines,
    )


if __name__ == "__main__":  # python -m rl_control.bench.acktr [--quick]
    import sys

    run_acktr_overhead("--quick" in sys.argv)
