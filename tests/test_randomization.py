"""Domain randomization: bounds, no compounding, determinism, the off switch, config errors, latency."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from pydantic import ValidationError

from sim.randomization import RandomizationConfig, sample_episode
from sim.tasks import make_env
from sim.tasks.base import MujocoRobotEnv, load_model

WIDE = RandomizationConfig.model_validate(
    {
        "dynamics": {
            "mass_scale": [0.5, 1.5],
            "com_offset": [-0.02, 0.02],
            "friction_scale": {"low": 0.3, "high": 2.0, "log": True},
            "damping_scale": [0.5, 2.0],
            "armature_scale": [0.5, 1.5],
            "motor_strength": [0.8, 1.2],
            "kp_scale": [0.7, 1.3],
            "kd_scale": [0.6, 1.4],
            "home_jitter": [-0.05, 0.05],
            "encoder_offset": [-0.03, 0.03],
        },
        "perturbation": {"obs_bias": [-0.02, 0.02], "latency_steps": [0, 3]},
    }
)
"""Every reset-time parameter non-trivial, so each is exercised."""


NOMINAL_FIELDS = ("body_mass", "body_ipos", "geom_friction", "dof_damping", "dof_armature", "actuator_gear")
"""The model fields randomization writes."""


def identity_config(latency: int = 0, **perturbation: object) -> RandomizationConfig:
    """Randomization switched on, but every range pinned to the identity (and a fixed latency)."""
    return RandomizationConfig.model_validate(
        {
            "dynamics": {
                **{k: [1.0, 1.0] for k in ("mass_scale", "friction_scale", "damping_scale")},
                **{k: [1.0, 1.0] for k in ("armature_scale", "motor_strength", "kp_scale", "kd_scale")},
                **{k: [0.0, 0.0] for k in ("com_offset", "home_jitter", "encoder_offset")},
            },
            "perturbation": {
                "obs_noise_scale": 0.0,
                "obs_bias": [0.0, 0.0],
                "action_noise_std": 0.0,
                "latency_steps": [latency, latency],
                **perturbation,
            },
        }
    )


def test_10000_resets_stay_in_range_and_never_compound() -> None:
    env = make_env("quadruped_walk", WIDE)
    fresh = load_model("quadruped.xml")  # an independent nominal: proves the env's copy never drifts
    d, p = WIDE.dynamics, WIDE.perturbation
    home = env.mapper.home
    env.reset(seed=123)
    samples = []
    for i in range(10_000):
        _, info = env.reset()
        s = env._sample  # the full sample behind info["randomization"]
        samples.append(s)
        # The model is nominal x sample, from the file's values, whatever happened before.
        m = env.model
        assert np.array_equal(m.body_mass, fresh.body_mass * s.mass_scale), i
        assert np.array_equal(m.body_ipos, fresh.body_ipos + s.com_offset), i
        assert np.array_equal(m.geom_friction, fresh.geom_friction * s.friction_scale), i
        assert np.array_equal(m.dof_damping, fresh.dof_damping * s.damping_scale), i
        assert np.array_equal(m.dof_armature, fresh.dof_armature * s.armature_scale), i
        assert np.array_equal(m.actuator_gear[:, 0], fresh.actuator_gear[:, 0] * s.motor_strength), i
        assert np.array_equal(m.actuator_gear[:, 1:], fresh.actuator_gear[:, 1:]), i
        assert np.allclose(env.joint_pos, home + s.home_jitter, rtol=0, atol=1e-12), i
        assert info["randomization"]["latency_steps"] == s.latency_steps
        if i % 1000 == 0:  # every parameter is reported, as its summary
            got = info["randomization"]
            assert got["mass_scale"] == pytest.approx(np.mean(s.mass_scale[1:]))
            assert got["com_offset"] == pytest.approx(np.mean(np.linalg.norm(s.com_offset[1:], axis=1)))
            assert got["armature_scale"] == pytest.approx(np.mean(s.armature_scale))
            assert got["kd_scale"] == pytest.approx(np.mean(s.kd_scale))
            assert got["home_jitter"] == pytest.approx(np.mean(np.abs(s.home_jitter)))
            assert got["encoder_offset"] == pytest.approx(np.mean(np.abs(s.encoder_offset)))
            assert got["obs_bias"] == pytest.approx(np.mean(np.abs(s.obs_bias)))
            assert got["com_offset"] > 0 and got["encoder_offset"] > 0  # WIDE ranges: sampled, not nominal

    def stacked(name: str) -> np.ndarray:
        return np.array([getattr(s, name) for s in samples])

    # Every sampled value of every reset is inside its range (the world body, index 0, is never scaled).
    assert d.mass_scale.contains(stacked("mass_scale")[:, 1:]) and (stacked("mass_scale")[:, 0] == 1).all()
    assert d.com_offset.contains(stacked("com_offset")[:, 1:]) and not stacked("com_offset")[:, 0].any()
    scales = ("friction_scale", "damping_scale", "armature_scale", "motor_strength", "kp_scale")
    for name in (*scales, "kd_scale", "home_jitter", "encoder_offset"):
        assert getattr(d, name).contains(stacked(name)), name
    assert p.obs_bias.contains(stacked("obs_bias"))
    assert set(stacked("latency_steps").tolist()) == {0, 1, 2, 3}
    # ... and the samples fill their ranges (a sampler stuck at one value would also be "in range").
    assert stacked("kp_scale").min() < 0.71 and stacked("kp_scale").max() > 1.29


def test_sample_episode_is_pure() -> None:
    model = load_model("arm.xml")
    a = sample_episode(np.random.default_rng(5), WIDE, model, 3, 12)
    b = sample_episode(np.random.default_rng(5), WIDE, model, 3, 12)
    for field in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def _rollout(task_id: str, cfg: RandomizationConfig, seed: int) -> list[np.ndarray]:
    """Observations, rewards and logged samples of three episodes (the later ones reset without a seed)."""
    env = make_env(task_id, cfg)
    actions = np.random.default_rng(99)
    out = []
    for episode in range(3):
        obs, info = env.reset(seed=seed if episode == 0 else None)
        out += [obs, np.array(list(info["randomization"].values()))]
        for _ in range(30):
            obs, reward, terminated, truncated, _ = env.step(actions.uniform(-1, 1, env.action_space.shape))
            out += [obs, np.array([reward])]
            if terminated or truncated:
                break
    return out


@pytest.mark.parametrize("task_id", ["arm_reach", "quadruped_walk"])
def test_same_seed_same_sequence(task_id: str) -> None:
    # Everything on, including pushes and dropout, so every per-step random draw is in the sequence.
    tree = WIDE.model_dump()
    tree["perturbation"].update(push_prob=0.3, push_force=[5.0, 20.0], dropout_prob=0.2)
    cfg = RandomizationConfig.model_validate(tree)
    first, second = _rollout(task_id, cfg, seed=7), _rollout(task_id, cfg, seed=7)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    other = _rollout(task_id, cfg, seed=8)
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("task_id", ["pendulum_swingup", "arm_reach", "quadruped_walk"])
def test_disabled_gives_exactly_the_nominal_model(task_id: str) -> None:
    # Wide ranges, but switched off: nothing of them may leak through.
    off = WIDE.model_copy(update={"enabled": False})
    env = make_env(task_id, off)
    fresh = load_model(env.xml_name)
    for seed in range(5):
        env.reset(seed=seed)
        for _ in range(3):
            env.step(np.zeros(env.action_space.shape))
        for field in NOMINAL_FIELDS:
            assert np.array_equal(getattr(env.model, field), getattr(fresh, field)), field
        assert env.randomization.enabled is False
    # No noise, bias or latency: two resets with the same seed give the same observation, and the
    # joint observation is the true state.
    obs_a, info = env.reset(seed=3)
    obs_b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert info["randomization"]["latency_steps"] == 0.0
    if "joint_pos" in env.interface.term_slices():
        pos = obs_a[env.interface.term_slices()["joint_pos"]]
        np.testing.assert_allclose(pos, env.joint_pos - env.mapper.home, atol=1e-6)


def test_config_errors_are_clear() -> None:
    ordered = r"dynamics\.mass_scale[\s\S]*low \(1\.2\) must be <= high \(0\.8\)"
    with pytest.raises(ValidationError, match=ordered):
        RandomizationConfig.model_validate({"dynamics": {"mass_scale": [1.2, 0.8]}})
    with pytest.raises(ValidationError, match=r"dynamics\.mass_scael[\s\S]*Extra inputs are not permitted"):
        RandomizationConfig.model_validate({"dynamics": {"mass_scael": [0.9, 1.1]}})
    with pytest.raises(ValidationError, match=r"dynmics[\s\S]*Extra inputs are not permitted"):
        RandomizationConfig.model_validate({"dynmics": {}})
    with pytest.raises(ValidationError, match="log-uniform range needs low > 0"):
        RandomizationConfig.model_validate({"dynamics": {"kp_scale": {"low": 0, "high": 2, "log": True}}})
    with pytest.raises(ValidationError, match=r"latency_steps must satisfy 0 <= low <= high"):
        RandomizationConfig.model_validate({"perturbation": {"latency_steps": [3, 1]}})
    with pytest.raises(ValidationError, match=r"perturbation\.push_prob"):
        RandomizationConfig.model_validate({"perturbation": {"push_prob": 1.5}})


def test_config_errors_name_file_and_key(tmp_path) -> None:
    from rl_control.config import ConfigError, load_config

    path = tmp_path / "bad.yaml"
    path.write_text("env:\n  randomization:\n    dynamics:\n      kp_scale: [1.3, 0.7]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml[\s\S]*env\.randomization\.dynamics\.kp_scale"):
        load_config(path)


def _joint_trajectory(env: MujocoRobotEnv, actions: list[np.ndarray]) -> np.ndarray:
    env.reset(seed=0)
    # The same start for every run: hanging still (pendulum) or home at rest (arm).
    env.data.qpos[env._qpos_adr] = 0.0 if env.xml_name == "pendulum.xml" else env.mapper.home
    env.data.qvel[:] = 0.0
    mujoco.mj_forward(env.model, env.data)
    trajectory = []
    for action in actions:
        env.step(action)
        trajectory.append(env.joint_pos)
    return np.array(trajectory)


@pytest.mark.parametrize(("task_id", "k"), [("pendulum_swingup", 2), ("arm_reach", 3)])
def test_latency_delays_actions_by_k_steps(task_id: str, k: int) -> None:
    rng = np.random.default_rng(1)
    n_act = make_env(task_id).action_space.shape[0]
    actions = [rng.uniform(-1, 1, n_act) for _ in range(15)]
    delayed_env = make_env(task_id, identity_config(latency=k))
    delayed = _joint_trajectory(delayed_env, actions)
    assert delayed_env.reset(seed=0)[1]["randomization"]["latency_steps"] == k
    # The same actions, shifted by hand in an env without latency: only a shift of exactly k matches.
    prompt_env = make_env(task_id, identity_config(latency=0))
    errors = []
    for lag in range(5):
        shifted = [np.zeros(n_act)] * lag + actions[: len(actions) - lag]
        errors.append(np.abs(_joint_trajectory(prompt_env, shifted) - delayed).max())
    assert errors[k] == 0.0
    assert all(e > 1e-3 for lag, e in enumerate(errors) if lag != k), errors


def test_pushes_act_on_the_push_body() -> None:
    def torso_speed(push_prob: float) -> float:
        env = make_env("quadruped_walk", identity_config(push_prob=push_prob, push_force=[100.0, 100.0]))
        env.reset(seed=0)
        env.step(np.zeros(12))
        assert not env.data.xfrc_applied.any()  # the force lasts one policy step only
        return float(np.linalg.norm(env.base_velocity()[:2]))

    # 100 N for 20 ms on 3.3 kg is 0.6 m/s, less what the feet's friction takes back (<= 0.2 m/s).
    assert torso_speed(0.0) < 0.02
    assert torso_speed(1.0) > 0.3


def test_sensor_dropout_repeats_the_stale_reading() -> None:
    env = make_env("arm_reach", identity_config(dropout_prob=1.0))
    obs0, _ = env.reset(seed=0)
    pos = env.interface.term_slices()["joint_pos"]
    last = env.interface.term_slices()["last_action"]
    action = np.array([0.5, -0.5, 0.5])
    for _ in range(10):
        obs, *_ = env.step(action)
    assert np.abs(env.joint_pos - env.mapper.home).max() > 0.3  # the arm moved ...
    np.testing.assert_array_equal(obs[pos], obs0[pos])  # ... but every reading was dropped
    np.testing.assert_allclose(obs[last], action)  # the policy's own last action is always current


def test_encoder_offset_obs_bias_and_pd_gain_scales_act_where_they_should() -> None:
    """Each sampled value reaches the place it models: the encoder offset the joint reading, the observation
    bias every observation entry, the PD scales the actuator effort (position-controlled arm)."""
    raw = identity_config(obs_bias=[0.3, 0.3]).model_dump()
    raw["dynamics"] |= {"encoder_offset": [0.05, 0.05], "kp_scale": [1.5, 1.5], "kd_scale": [0.5, 0.5]}
    cfg = RandomizationConfig.model_validate(raw)
    env = make_env("arm_reach", cfg)
    obs, _ = env.reset(seed=2)
    reading = env.read_sensors()
    np.testing.assert_allclose(reading.joint_pos - env.joint_pos, 0.05, rtol=0, atol=1e-12)
    unbiased = env.builder.build(reading, np.zeros(env.interface.action_size), env.command)
    np.testing.assert_allclose(obs - unbiased, 0.3, rtol=0, atol=1e-6)  # float32 observation
    q, qd = env.joint_pos, env.joint_vel
    targets = q + 0.1
    tau = env._simulate(targets, nstep=1)  # one physics step: the torque of the PD at the current state
    mapper = env.mapper
    expected = np.clip(mapper.kp * 1.5 * (targets - q) - mapper.kd * 0.5 * qd, -mapper.effort_max, mapper.effort_max)
    np.testing.assert_allclose(tau, expected, rtol=1e-12, atol=1e-12)
    assert not np.allclose(tau, mapper.effort(targets, q, qd))  # nominal gains would differ


def test_observation_noise_has_each_terms_standard_deviation() -> None:
    from sim.randomization import observation_noise

    env = make_env("arm_reach", identity_config(obs_noise_scale=2.0))
    noise = np.array([observation_noise(np.random.default_rng(k), env._noise_std, env.randomization)
                      for k in range(4000)])
    expected = 2.0 * env._noise_std
    assert np.all(expected[: env.interface.num_joints] > 0)  # the joint-position term is noisy
    np.testing.assert_allclose(noise.std(axis=0), expected, rtol=0.06, atol=1e-12)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.1 * expected.max())
