"""Typed, validated run configuration loaded from YAML.

Every model is frozen and forbids unknown keys. Errors name the file, the key path and what was
expected. ``--set a.b=c`` overrides are applied to the raw YAML tree before validation, so they are
validated exactly like the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from sim.randomization import RandomizationConfig


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvConfig(_Frozen):
    task: str = Field("pendulum_swingup", description="task id (see `rlctl envs`) or any Gymnasium id")
    num_envs: int = Field(8, ge=1, description="parallel environments")
    workers: int = Field(0, ge=0, description="simulation worker processes; 0 steps envs in-process")
    caller_steps: bool = Field(
        False,
        description="the training process steps one slice of the envs itself beside the workers (workers + 1 "
        "slices; set workers to the cores minus one); needs 1 <= workers < num_envs",
    )
    randomization: RandomizationConfig = Field(
        default_factory=RandomizationConfig, description="domain randomization ranges"
    )

    @model_validator(mode="after")
    def _check_caller_steps(self) -> EnvConfig:
        if self.caller_steps and not 1 <= self.workers < self.num_envs:
            raise ValueError(
                f"caller_steps needs 1 <= workers < num_envs, got workers={self.workers}, num_envs={self.num_envs}"
            )
        return self


class PolicyConfig(_Frozen):
    kind: Literal["mlp", "lstm"] = Field("mlp", description="network type")
    hidden_sizes: tuple[int, ...] = Field((64, 64), description="MLP layer widths (after the LSTM if any)")
    lstm_hidden: int = Field(64, ge=1, description="LSTM hidden size")
    shared_trunk: bool = Field(
        False,
        description="actor and critic share the trunk: one LSTM (kind lstm; each keeps its MLP layers) or one "
        "MLP body (kind mlp; each keeps its output layer); PPO only, TRPO and ACKTR need separate trunks",
    )
    init_log_std: float = Field(-0.5, description="initial log standard deviation of the Gaussian")
    activation: Literal["tanh", "elu", "relu"] = Field("tanh", description="hidden activation")
    normalize_obs: bool = Field(True, description="running observation normalizer inside the policy")


class PPOConfig(_Frozen):
    name: Literal["ppo"] = "ppo"
    rollout_steps: int = Field(256, ge=1, description="steps per env per iteration")
    epochs: int = Field(10, ge=1, description="passes over each rollout")
    minibatches: int = Field(4, ge=1, description="minibatches per epoch")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate")
    lr_schedule: Literal["constant", "linear"] = Field("constant", description="learning-rate schedule")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    surrogate: Literal["clip", "kl_penalty"] = Field("clip", description="PPO objective")
    clip_range: float = Field(0.2, gt=0, description="probability-ratio clip (clip surrogate)")
    kl_target: float = Field(0.01, gt=0, description="d_targ of the adaptive KL penalty")
    kl_beta_init: float = Field(1.0, gt=0, description="initial KL penalty coefficient")
    kl_early_stop: float | None = Field(None, description="stop the epoch loop when KL exceeds this")
    clip_value: float | None = Field(None, description="value clipping range (None: no clipping)")
    value_coef: float = Field(0.5, ge=0, description="value loss weight")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus weight")
    max_grad_norm: float = Field(0.5, gt=0, description="gradient-norm clip")
    bptt_len: int = Field(32, ge=1, description="truncated BPTT sequence length (LSTM)")
    normalize_advantages: bool = Field(True, description="per-minibatch advantage normalization")
    reward_scale: float = Field(1.0, gt=0, description="constant reward multiplier")
    normalize_rewards: bool = Field(False, description="divide rewards by the running std of the return")


class TRPOConfig(_Frozen):
    """Trust Region Policy Optimization (Schulman et al. 2015) with GAE (Schulman et al. 2016)."""

    name: Literal["trpo"] = Field("trpo", description="algorithm: trust region policy optimization")
    rollout_steps: int = Field(256, ge=1, description="steps per env per iteration")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    gae_lambda: float = Field(0.97, ge=0, le=1, description="GAE lambda")
    max_kl: float = Field(0.01, gt=0, description="trust-region radius delta on the mean KL(old || new)")
    cg_iters: int = Field(10, ge=1, description="conjugate-gradient iterations per solve")
    cg_damping: float = Field(0.1, ge=0, description="damping added in the Fisher and Gauss-Newton products")
    cg_residual_tol: float = Field(1e-10, gt=0, description="CG stops at this squared residual norm")
    line_search_steps: int = Field(10, ge=1, description="backtracking steps before keeping the old policy")
    line_search_shrink: float = Field(0.8, gt=0, lt=1, description="step fraction factor per backtrack")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus weight in the surrogate")
    normalize_advantages: bool = Field(True, description="normalize advantages over the whole batch")
    value_method: Literal["regression", "trust_region"] = Field(
        "regression", description="value fit: Adam regression, or the GAE paper's trust-region regression"
    )
    vf_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the value regression")
    vf_epochs: int = Field(5, ge=1, description="passes over the rollout of the value regression")
    vf_minibatches: int = Field(4, ge=1, description="minibatches per pass of the value regression")
    vf_max_change: float = Field(
        0.05, gt=0, description="trust_region value: bound on mean (V_new - V_old)^2 / (2 sigma^2)"
    )
    bptt_len: int = Field(32, ge=1, description="truncated BPTT sequence length (LSTM)")
    reward_scale: float = Field(1.0, gt=0, description="constant reward multiplier")
    normalize_rewards: bool = Field(False, description="divide rewards by the running std of the return")


class ACKTRConfig(_Frozen):
    """Actor-critic using Kronecker-factored trust region (Wu et al. 2017); MLP policies only."""

    name: Literal["acktr"] = Field("acktr", description="algorithm: K-FAC natural actor-critic")
    rollout_steps: int = Field(256, ge=1, description="steps per env per iteration")
    gamma: float = Field(0.99, ge=0, le=1, description="discount")
    gae_lambda: float = Field(0.97, ge=0, le=1, description="GAE lambda")
    lr: float = Field(0.5, gt=0, description="maximum actor step size eta_max (the KL clip usually binds)")
    kl_clip: float = Field(0.01, gt=0, description="actor trust region delta on the quadratic KL estimate")
    vf_lr: float = Field(0.5, gt=0, description="maximum critic step size (1.0: the full Gauss-Newton step)")
    vf_kl_clip: float = Field(
        0.1, gt=0, description="critic trust region on mean (V_new - V_old)^2 / (2 sigma^2), sigma^2 the MSE"
    )
    vf_steps: int = Field(4, ge=1, description="critic K-FAC steps per iteration (full batch each)")
    damping: float = Field(0.1, gt=0, description="Tikhonov damping of the Kronecker-factored Fisher")
    stat_decay: float = Field(0.95, ge=0, lt=1, description="running-average decay of the K-FAC factors")
    inverse_every: int = Field(1, ge=1, description="K-FAC steps between eigendecompositions of the factors")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus weight")
    normalize_advantages: bool = Field(True, description="normalize advantages over the whole batch")
    reward_scale: float = Field(1.0, gt=0, description="constant reward multiplier")
    normalize_rewards: bool = Field(False, description="divide rewards by the running std of the return")



class _OffPolicyConfig(_Frozen):
    """Settings shared by the off-policy algorithms (replay, targets, update-to-data ratio)."""

    buffer_size: int = Field(1_000_000, ge=16, description="replay capacity in transitions (all envs together)")
    batch_size: int = Field(256, ge=1, description="transitions per gradient update (MLP policies)")
    warmup_steps: int = Field(5_000, ge=0, description="env steps of uniform random actions before learning")
    utd_ratio: float = Field(1.0, gt=0, description="gradient updates per env step (update-to-data ratio)")
    gamma: float = Field(0.99, ge=0, lt=1, description="discount")
    tau: float = Field(0.005, gt=0, le=1, description="polyak rate of the target networks")
    n_step: int = Field(
        1, ge=1, description="n of the n-step returns in the critic targets (MLP policies; recurrent SAC refuses n > 1)"
    )
    actor_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the actor")
    critic_lr: float = Field(3e-4, gt=0, description="Adam learning rate of the critics")
    reward_scale: float = Field(1.0, gt=0, description="constant reward multiplier")
    reward_bounds: tuple[float, float] | None = Field(
        None, description="known [r_min, r_max] of the scaled reward: clip targets to r / (1 - gamma)"
    )
    iteration_steps: int = Field(1_000, ge=1, description="env steps per iteration (one metrics record)")
    save_replay: bool = Field(False, description="also checkpoint the replay buffer (large) for exact resume")
    hidden_matmul: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="precision of the hidden-to-hidden products in updates (bfloat16: ~2x faster products on a "
        "CPU with native bfloat16, slower without; inputs, outputs, losses and weights stay float32)",
    )


class SACConfig(_OffPolicyConfig):
    """Soft Actor-Critic (Haarnoja et al. 2018), continuous or discrete (Christodoulou 2019); LSTM with
    ``policy.kind=lstm`` (continuous actions)."""

    name: Literal["sac"] = Field("sac", description="algorithm: soft actor-critic")
    alpha_lr: float = Field(3e-4, gt=0, description="Adam learning rate of log(alpha)")
    init_alpha: float = Field(1.0, gt=0, description="initial entropy temperature alpha")
    auto_alpha: bool = Field(True, description="tune alpha towards the target entropy")
    target_entropy: float | None = Field(
        None, description="entropy target (None: -|A| continuous, target_entropy_ratio * log K discrete)"
    )
    target_entropy_ratio: float = Field(0.98, gt=0, le=1, description="discrete SAC: target = ratio * log K")
    burn_in: int = Field(16, ge=0, description="LSTM: steps that only refresh the hidden state per sequence")
    sequence_length: int = Field(32, ge=1, description="LSTM: trained steps per sampled sequence")
    sequences_per_batch: int = Field(16, ge=1, description="LSTM: sequences per gradient update")


class TD3Config(_OffPolicyConfig):
    """Twin Delayed DDPG (Fujimoto et al. 2018)."""

    name: Literal["td3"] = Field("td3", description="algorithm: twin delayed deep deterministic policy gradient")
    policy_delay: int = Field(2, ge=1, description="critic updates per actor and target update")
    exploration_noise: float = Field(0.1, ge=0, description="std of the Gaussian action noise when collecting")
    target_noise: float = Field(0.2, ge=0, description="std of the target policy smoothing noise")
    target_noise_clip: float = Field(0.5, ge=0, description="clip of the target policy smoothing noise")


class TQCConfig(_OffPolicyConfig):
    """Truncated Quantile Critics (Kuznetsov et al. 2020)."""

    name: Literal["tqc"] = Field("tqc", description="algorithm: truncated quantile critics")
    n_critics: int = Field(5, ge=1, description="critic networks N")
    n_quantiles: int = Field(25, ge=1, description="quantiles M per critic")
    top_quantiles_to_drop: int = Field(2, ge=0, description="atoms k dropped per critic from the pooled target")
    huber_kappa: float = Field(1.0, gt=0, description="threshold of the quantile Huber loss")
    alpha_lr: float = Field(3e-4, gt=0, description="Adam learning rate of log(alpha)")
    init_alpha: float = Field(1.0, gt=0, description="initial entropy temperature alpha")
    auto_alpha: bool = Field(True, description="tune alpha towards the target entropy")
    target_entropy: float | None = Field(None, description="entropy target (None: -|A|)")

def _default_algo_name(value: object) -> object:
    if isinstance(value, dict) and "name" not in value:
        return {**value, "name": "ppo"}
    return value


# Add each new algorithm's config class to this union (discriminated by its ``name`` literal).
AlgoConfig = Annotated[
    PPOConfig | TRPOConfig | ACKTRConfig | SACConfig | TD3Config | TQCConfig,
    Field(discriminator="name"),
    BeforeValidator(_default_algo_name),
]
"""One algorithm's settings, selected by ``name`` (default ppo)."""


class RunnerConfig(_Frozen):
    total_steps: int = Field(200_000, ge=1, description="environment steps to train for")
    eval_every: int = Field(10, ge=1, description="iterations between evaluations")
    eval_episodes: int = Field(8, ge=1, description="episodes per evaluation")
    checkpoint_every: int = Field(10, ge=1, description="iterations between checkpoints")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (1 avoids oversubscription)")
    device: Literal["cpu"] = Field("cpu", description="training device")


class DistributedConfig(_Frozen):
    """Where rollouts are collected (issue 8): in the learner's process, or by Ray actors on a cluster.

    With ``backend: ray`` each of ``workers`` actors owns a vector env with a contiguous slice of the
    ``env.num_envs`` envs and a copy of the policy; weights go out once per iteration. On-policy algorithms:
    rollouts come back to the learner, which computes advantages and updates as in the local case. Off-policy
    algorithms (SAC, TD3, TQC with ``policy.kind=mlp``; not recurrent SAC): every worker steps its envs
    ``algo.iteration_steps / env.num_envs`` times with the algorithm's exploration policy (random actions
    during ``warmup_steps``), the learner adds the transitions to its replay buffer in worker order and then
    runs ``utd_ratio`` updates per transition. Either way a lost worker is replaced (fresh episodes on its
    slice) and its part of the iteration redone. ``env.workers`` applies to the local backend; a Ray worker
    starts ``env_workers`` simulation processes.
    """

    backend: Literal["local", "ray"] = Field("local", description="local: in-process vector env; ray: Ray actors")
    address: str | None = Field(
        None, description="Ray cluster ('HOST:PORT', 'auto', 'ray://HOST:PORT'); None starts a private local one"
    )
    node_ip_address: str | None = Field(
        None, description="this learner's IP as the cluster knows it (else Ray picks the external address)"
    )
    workers: int = Field(2, ge=1, description="rollout workers (Ray actors); env.num_envs is split among them")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves in Ray's scheduler")
    env_workers: int = Field(
        0, ge=0, description="simulation processes inside each worker (0: the worker steps its envs itself)"
    )
    placement: Literal["spread", "default"] = Field(
        "spread", description="spread: workers over as many nodes as possible; default: Ray's packing"
    )
    worker_timeout_s: float = Field(300.0, gt=0, description="a worker silent this long is treated as lost")
    max_replacements: int = Field(
        8, ge=0, description="lost workers replaced per iteration before training stops with an error"
    )


class RunConfig(_Frozen):
    seed: int = Field(0, description="seed of everything")
    env: EnvConfig = Field(default_factory=EnvConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    algo: AlgoConfig = Field(default_factory=PPOConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _check_distributed(self) -> RunConfig:
        """Cross-section checks of the Ray backend (raise; never adjust silently)."""
        d = self.distributed
        if d.backend == "ray":
            if isinstance(self.algo, _OffPolicyConfig) and self.policy.kind != "mlp":
                raise ValueError(
                    f"distributed.backend=ray with algo.name={self.algo.name!r} needs policy.kind=mlp: recurrent "
                    "SAC carries LSTM state through its collection and trains on sequences, which the Ray "
                    "transition stream does not do; use distributed.backend=local"
                )
            if d.workers > self.env.num_envs:
                raise ValueError(
                    f"distributed.workers={d.workers} exceeds env.num_envs={self.env.num_envs}: "
                    "every worker needs at least one env"
                )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(self.model_dump_json()), sort_keys=False)

    def digest(self) -> str:
        """Short hash of the resolved config (goes into checkpoints and the ONNX metadata)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"{source}: invalid config"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {path}: {err['msg']}{got_text}")
    return "\n".join(lines)


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw)


def parse_config(tree: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    tree: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from None
        try:
            tree = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: the top level must be a mapping, got {type(tree).__name__}")
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source += " (with --set " + ", ".join(overrides) + ")"
    return parse_config(tree, source)
