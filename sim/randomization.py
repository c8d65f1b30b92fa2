"""Domain randomization as pure, seeded functions.

Dynamics are sampled on reset and always written relative to the nominal model (a copy taken once at
construction), so nothing compounds across episodes. Per-step perturbations (observation noise and bias,
action noise, latency, pushes, sensor dropout) are sampled from the same per-env generator, so the same
seed gives the same sequence.

Ranges live in config (``RandomizationConfig``); ``enabled: false`` turns all of it off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import mujoco
import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _range_from_list(value: object) -> object:
    if isinstance(value, list | tuple) and len(value) == 2:
        return {"low": value[0], "high": value[1]}
    return value


class _Range(BaseModel):
    """A closed interval to sample uniformly (or log-uniformly when ``log`` is true)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-uniform range needs low > 0")
        return self

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        if self.log:
            return np.exp(rng.uniform(np.log(self.low), np.log(self.high), size))
        return rng.uniform(self.low, self.high, size)

    def contains(self, x: np.ndarray) -> bool:
        x = np.asarray(x)
        return bool(np.all(x >= self.low - 1e-12) and np.all(x <= self.high + 1e-12))


Range = Annotated[_Range, BeforeValidator(_range_from_list)]
"""Written in YAML as ``[low, high]`` or ``{low: .., high: .., log: true}``."""


def _fixed(value: float) -> _Range:
    return _Range(low=value, high=value)


class DynamicsRanges(BaseModel):
    """Parameters sampled once per episode, as multipliers or offsets of the nominal model."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mass_scale: Range = Field(default_factory=lambda: _Range(low=0.8, high=1.2), description="link mass x")
    com_offset: Range = Field(default_factory=lambda: _Range(low=-0.01, high=0.01), description="CoM shift, m")
    friction_scale: Range = Field(default_factory=lambda: _Range(low=0.7, high=1.3), description="friction x")
    damping_scale: Range = Field(default_factory=lambda: _Range(low=0.7, high=1.5), description="damping x")
    armature_scale: Range = Field(default_factory=lambda: _Range(low=0.8, high=1.2), description="armature x")
    motor_strength: Range = Field(default_factory=lambda: _Range(low=0.85, high=1.15), description="torque x")
    kp_scale: Range = Field(default_factory=lambda: _Range(low=0.9, high=1.1), description="PD kp x")
    kd_scale: Range = Field(default_factory=lambda: _Range(low=0.9, high=1.1), description="PD kd x")
    home_jitter: Range = Field(default_factory=lambda: _fixed(0.0), description="initial pose jitter, rad")
    encoder_offset: Range = Field(default_factory=lambda: _Range(low=-0.02, high=0.02), description="rad")


class PerturbationRanges(BaseModel):
    """Per-step perturbations of sensing and actuation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    obs_noise_scale: float = Field(1.0, ge=0, description="multiplies each observation term's noise_std")
    obs_bias: Range = Field(default_factory=lambda: _Range(low=-0.01, high=0.01), description="per-episode")
    action_noise_std: float = Field(0.02, ge=0, description="Gaussian noise on the policy output")
    latency_steps: tuple[int, int] = Field((0, 1), description="action delay in policy steps, per episode")
    push_prob: float = Field(0.0, ge=0, le=1, description="chance per policy step of a push")
    push_force: Range = Field(default_factory=lambda: _fixed(0.0), description="push magnitude, N")
    dropout_prob: float = Field(0.0, ge=0, le=1, description="chance per step that a reading is stale")

    @model_validator(mode="after")
    def _latency_ordered(self) -> PerturbationRanges:
        lo, hi = self.latency_steps
        if not 0 <= lo <= hi:
            raise ValueError(f"latency_steps must satisfy 0 <= low <= high, got {self.latency_steps}")
        return self


class RandomizationConfig(BaseModel):
    """All of domain randomization; ``enabled: false`` turns everything off."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    dynamics: DynamicsRanges = Field(default_factory=DynamicsRanges)
    perturbation: PerturbationRanges = Field(default_factory=PerturbationRanges)

    def widened(self, factor: float) -> RandomizationConfig:
        """A harder randomization: every range's half-width times ``factor`` (held-out evaluation)."""

        def widen(r: _Range) -> _Range:
            mid, half = 0.5 * (r.low + r.high), 0.5 * (r.high - r.low) * factor
            low = max(mid - half, 1e-3) if r.log or r.low > 0 else mid - half
            return _Range(low=low, high=mid + half, log=r.log)

        dyn = {k: widen(v) for k, v in self.dynamics}
        per = dict(self.perturbation)
        per["obs_bias"] = widen(self.perturbation.obs_bias)
        per["push_force"] = widen(self.perturbation.push_force)
        per["action_noise_std"] = self.perturbation.action_noise_std * factor
        per["obs_noise_scale"] = self.perturbation.obs_noise_scale * factor
        return RandomizationConfig(
            enabled=self.enabled, dynamics=DynamicsRanges(**dyn), perturbation=PerturbationRanges(**per)
        )


OFF = RandomizationConfig(enabled=False)


@dataclass(frozen=True)
class NominalModel:
    """Copies of the model fields randomization touches, taken once, so samples never compound."""

    body_mass: np.ndarray
    body_ipos: np.ndarray
    geom_friction: np.ndarray
    dof_damping: np.ndarray
    dof_armature: np.ndarray
    actuator_gear: np.ndarray

    @classmethod
    def of(cls, model: mujoco.MjModel) -> NominalModel:
        return cls(
            body_mass=model.body_mass.copy(),
            body_ipos=model.body_ipos.copy(),
            geom_friction=model.geom_friction.copy(),
            dof_damping=model.dof_damping.copy(),
            dof_armature=model.dof_armature.copy(),
            actuator_gear=model.actuator_gear.copy(),
        )


@dataclass(frozen=True)
class EpisodeSample:
    """Everything sampled at one reset. ``as_info()`` is what goes into ``info`` for logging."""

    mass_scale: np.ndarray  # [nbody]
    com_offset: np.ndarray  # [nbody, 3]
    friction_scale: float
    damping_scale: np.ndarray  # [nv]
    armature_scale: np.ndarray  # [nv]
    motor_strength: np.ndarray  # [nu]
    kp_scale: np.ndarray  # [n_joints]
    kd_scale: np.ndarray  # [n_joints]
    home_jitter: np.ndarray  # [n_joints]
    encoder_offset: np.ndarray  # [n_joints]
    obs_bias: np.ndarray  # [obs_size]
    latency_steps: int

    def as_info(self) -> dict[str, float]:
        """One number per parameter, for logging: scales as means over bodies / dofs / joints (the world body
        excluded), offsets as mean absolute values (``com_offset``: mean norm, m). The full arrays are this
        sample's fields (the env's ``_sample``)."""

        def mean(x: np.ndarray, empty: float = 1.0) -> float:
            return float(np.mean(x)) if x.size else empty

        return {
            "mass_scale": mean(self.mass_scale[1:]),
            "com_offset": mean(np.linalg.norm(self.com_offset[1:], axis=1), 0.0),
            "friction_scale": float(self.friction_scale),
            "damping_scale": mean(self.damping_scale),
            "armature_scale": mean(self.armature_scale),
            "motor_strength": mean(self.motor_strength),
            "kp_scale": mean(self.kp_scale),
            "kd_scale": mean(self.kd_scale),
            "home_jitter": mean(np.abs(self.home_jitter), 0.0),
            "encoder_offset": mean(np.abs(self.encoder_offset), 0.0),
            "obs_bias": mean(np.abs(self.obs_bias), 0.0),
            "latency_steps": float(self.latency_steps),
        }


def nominal_sample(model: mujoco.MjModel, n_joints: int, obs_size: int) -> EpisodeSample:
    """The identity sample: nominal dynamics, no offsets (randomization off)."""
    return EpisodeSample(
        mass_scale=np.ones(model.nbody),
        com_offset=np.zeros((model.nbody, 3)),
        friction_scale=1.0,
        damping_scale=np.ones(model.nv),
        armature_scale=np.ones(model.nv),
        motor_strength=np.ones(model.nu),
        kp_scale=np.ones(n_joints),
        kd_scale=np.ones(n_joints),
        home_jitter=np.zeros(n_joints),
        encoder_offset=np.zeros(n_joints),
        obs_bias=np.zeros(obs_size),
        latency_steps=0,
    )


def sample_episode(
    rng: np.random.Generator,
    cfg: RandomizationConfig,
    model: mujoco.MjModel,
    n_joints: int,
    obs_size: int,
) -> EpisodeSample:
    """Draw one episode's dynamics and sensor parameters. Pure given ``rng``."""
    if not cfg.enabled:
        return nominal_sample(model, n_joints, obs_size)
    d, p = cfg.dynamics, cfg.perturbation
    mass = d.mass_scale.sample(rng, model.nbody)
    mass[0] = 1.0  # the world body has no mass to scale
    com = d.com_offset.sample(rng, (model.nbody, 3))
    com[0] = 0.0
    return EpisodeSample(
        mass_scale=mass,
        com_offset=com,
        friction_scale=float(d.friction_scale.sample(rng)),
        damping_scale=d.damping_scale.sample(rng, model.nv),
        armature_scale=d.armature_scale.sample(rng, model.nv),
        motor_strength=d.motor_strength.sample(rng, model.nu),
        kp_scale=d.kp_scale.sample(rng, n_joints),
        kd_scale=d.kd_scale.sample(rng, n_joints),
        home_jitter=d.home_jitter.sample(rng, n_joints),
        encoder_offset=d.encoder_offset.sample(rng, n_joints),
        obs_bias=p.obs_bias.sample(rng, obs_size),
        latency_steps=int(rng.integers(p.latency_steps[0], p.latency_steps[1] + 1)),
    )


def apply_dynamics(model: mujoco.MjModel, nominal: NominalModel, sample: EpisodeSample) -> None:
    """Write ``nominal * sample`` into ``model`` in place (never relative to the current values)."""
    model.body_mass[:] = nominal.body_mass * sample.mass_scale
    model.body_ipos[:] = nominal.body_ipos + sample.com_offset
    model.geom_friction[:] = nominal.geom_friction * sample.friction_scale
    model.dof_damping[:] = nominal.dof_damping * sample.damping_scale
    model.dof_armature[:] = nominal.dof_armature * sample.armature_scale
    model.actuator_gear[:] = nominal.actuator_gear
    model.actuator_gear[:, 0] = nominal.actuator_gear[:, 0] * sample.motor_strength


def observation_noise(
    rng: np.random.Generator, noise_std: np.ndarray, cfg: RandomizationConfig
) -> np.ndarray:
    """Per-step Gaussian observation noise, shape like ``noise_std`` ([obs_size])."""
    if not cfg.enabled or cfg.perturbation.obs_noise_scale == 0:
        return np.zeros_like(noise_std)
    return rng.normal(0.0, 1.0, noise_std.shape) * noise_std * cfg.perturbation.obs_noise_scale


def action_noise(rng: np.random.Generator, size: int, cfg: RandomizationConfig) -> np.ndarray:
    if not cfg.enabled or cfg.perturbation.action_noise_std == 0:
        return np.zeros(size)
    return rng.normal(0.0, cfg.perturbation.action_noise_std, size)


def sample_push(rng: np.random.Generator, cfg: RandomizationConfig) -> np.ndarray | None:
    """A horizontal force (N) to apply for one policy step, or None."""
    p = cfg.perturbation
    if not cfg.enabled or p.push_prob == 0 or rng.random() >= p.push_prob:
        return None
    angle = rng.uniform(0, 2 * np.pi)
    mag = float(p.push_force.sample(rng))
    return np.array([mag * np.cos(angle), mag * np.sin(angle), 0.0])


def sensor_dropped(rng: np.random.Generator, cfg: RandomizationConfig) -> bool:
    p = cfg.perturbation
    return bool(cfg.enabled and p.dropout_prob > 0 and rng.random() < p.dropout_prob)
