"""Small ONNX policies built by hand with ``onnx.helper``, following the export contract of deploy.export.

Used by the runtime, safety/controller and ROS node tests, so those run without torch or a trained
policy. Each builder writes a file and returns its path. Outputs are simple enough to work out by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sim.interface import ActionMapper, JointSpec, ObsTerm, RobotInterface

OPSET = 17


def pendulum_interface() -> RobotInterface:
    """The pendulum_swingup interface, written out here so builders need no mujoco/gymnasium."""
    return RobotInterface(
        task="pendulum_swingup",
        joints=(JointSpec(name="hinge", mode="torque", effort_max=1.0, vel_max=10.0),),
        policy_dt=0.05,
        substeps=10,
        obs_terms=(
            ObsTerm("joint_pos_sincos", scale=1.0, noise_std=0.01),
            ObsTerm("joint_vel", scale=0.125, noise_std=0.01),
            ObsTerm("last_action", scale=1.0),
        ),
        action_scale=(1.0,),
    )


def arm_interface(names: tuple[str, ...] = ("shoulder", "elbow")) -> RobotInterface:
    """A two-joint position-controlled arm with limits, for tests of clamping and name matching."""
    joints = tuple(
        JointSpec(name=n, mode="position", effort_max=5.0, vel_max=4.0, kp=20.0, kd=0.5, pos_min=-1.0,
                  pos_max=1.0, home=0.1 * i)
        for i, n in enumerate(names)
    )
    return RobotInterface(
        task="arm_reach",
        joints=joints,
        policy_dt=0.02,
        substeps=4,
        obs_terms=(ObsTerm("joint_pos"), ObsTerm("joint_vel", scale=0.1), ObsTerm("last_action")),
        action_scale=tuple(0.5 for _ in names),
    )


def metadata(
    interface: RobotInterface | None,
    obs_size: int,
    action_size: int,
    *,
    recurrent: str = "none",
    hidden: int = 0,
    layers: int = 0,
    action_kind: str = "continuous",
    **overrides: str,
) -> dict[str, str]:
    meta = {
        "simreal_format": "1",
        "interface": interface.to_json() if interface is not None else "",
        "task": interface.task if interface is not None else "CartPole-v1",
        "algorithm": "handmade",
        "obs_size": str(obs_size),
        "action_size": str(action_size),
        "action_kind": action_kind,
        "recurrent": recurrent,
        "lstm_hidden": str(hidden),
        "lstm_layers": str(layers),
        "project_version": "0.1.0",
        "config_hash": "0" * 12,
        "train_steps": "0",
        "train_return": "nan",
    }
    meta.update(overrides)
    return meta


def _save(graph: onnx.GraphProto, meta: dict[str, str] | None, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # readable by every onnxruntime >= 1.15
    if meta is not None:
        helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def _const(name: str, value: np.ndarray | float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _target_nodes(interface: RobotInterface | None, action_size: int) -> tuple[list, list]:
    """``target = clip(offset + scale * action, target_min, target_max)``, as ActionMapper.targets."""
    if interface is None:
        scale, offset = np.ones(action_size), np.zeros(action_size)
        lo, hi = np.full(action_size, -1e30), np.full(action_size, 1e30)
    else:
        m = ActionMapper(interface)
        scale, offset = m.scale, m.offset
        lo = np.maximum(m.target_min, -1e30)
        hi = np.minimum(m.target_max, 1e30)
    nodes = [
        helper.make_node("Mul", ["action", "t_scale"], ["t_scaled"]),
        helper.make_node("Add", ["t_scaled", "t_offset"], ["t_raw"]),
        helper.make_node("Max", ["t_raw", "t_lo"], ["t_low"]),
        helper.make_node("Min", ["t_low", "t_hi"], ["target"]),
    ]
    inits = [_const("t_scale", scale), _const("t_offset", offset), _const("t_lo", lo), _const("t_hi", hi)]
    return nodes, inits


def linear_policy(
    path: Path,
    weight: np.ndarray,
    bias: np.ndarray,
    interface: RobotInterface | None = None,
    clip: float = 1.0,
    meta: dict[str, str] | None = None,
) -> Path:
    """``action = clip(obs @ weight + bias, -clip, clip)`` and ``target`` as ActionMapper.targets.

    Args:
        weight: [obs_size, action_size].
        bias: [action_size].
        meta: Metadata to write instead of the default (None: derived from the interface and shapes).
    """
    obs_size, action_size = weight.shape
    nodes = [
        helper.make_node("MatMul", ["obs", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["pre"]),
        helper.make_node("Clip", ["pre", "lo", "hi"], ["action"]),
    ]
    inits = [_const("W", weight), _const("b", bias), _const("lo", -clip), _const("hi", clip)]
    t_nodes, t_inits = _target_nodes(interface, action_size)
    graph = helper.make_graph(
        nodes + t_nodes,
        "linear_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", obs_size])],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", action_size]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, ["B", action_size]),
        ],
        inits + t_inits,
    )
    if meta is None:
        meta = metadata(interface, obs_size, action_size)
    return _save(graph, meta, path)


def counter_policy(path: Path, obs_size: int, hidden: int, layers: int = 1, interface=None) -> Path:
    """A recurrent graph with hand-checkable state: ``h_out = h_in + obs[:, :hidden]``, ``c_out = c_in + 1``.

    ``action = sum over layers of h_out`` ([B, hidden]), so after k calls with the same observation x the
    action is ``k * layers * x[:hidden]``; ``target = action``. Needs obs_size >= hidden. ``interface``
    (hidden = its action size) makes it a deployable robot policy.
    """
    nodes = [
        helper.make_node("Slice", ["obs", "starts", "ends", "axes"], ["obs_h"]),
        helper.make_node("Add", ["h_in", "obs_h"], ["h_out"]),  # [L,B,H] + [B,H] broadcasts over L
        helper.make_node("Add", ["c_in", "one"], ["c_out"]),
        helper.make_node("ReduceSum", ["h_out", "axis0"], ["action"], keepdims=0),
        helper.make_node("Identity", ["action"], ["target"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([hidden], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        _const("one", 1.0),
    ]
    state = ["L", "B", hidden]
    graph = helper.make_graph(
        nodes,
        "counter_policy",
        [
            helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", obs_size]),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c_in", TensorProto.FLOAT, state),
        ],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", hidden]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, ["B", hidden]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state),
        ],
        inits,
    )
    meta = metadata(interface, obs_size, hidden, recurrent="lstm", hidden=hidden, layers=layers)
    return _save(graph, meta, path)


def argmax_policy(path: Path, obs_size: int) -> Path:
    """A discrete policy: ``action = argmax(obs)`` as int64 [B], no target."""
    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["obs"], ["action"], axis=1, keepdims=0)],
        "argmax_policy",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", obs_size])],
        [helper.make_tensor_value_info("action", TensorProto.INT64, ["B"])],
    )
    return _save(graph, metadata(None, obs_size, obs_size, action_kind="discrete"), path)


# Swing-up controller constants for pendulum.xml: bob 0.5 kg at 0.5 m, rod 0.02 kg, armature 0.002.
_MGL = (0.5 * 0.5 + 0.02 * 0.25) * 9.81  # gravity torque amplitude, N*m
_INERTIA = 0.5 * 0.25 + 0.02 * 0.25 / 3 + 0.002  # about the hinge, kg*m^2


def pendulum_controller(path: Path, energy_gain: float = 4.0, kp: float = 6.0, kd: float = 1.0) -> Path:
    """A hand-made swing-up-and-balance controller for pendulum_swingup, as an ONNX policy.

    Observation [sin q, cos q, 0.125 qd, last_action] with q = 0 hanging and q = pi upright. Far from the top
    it pumps energy, ``u = k (E_top - E) qd`` with ``E = I qd^2 / 2 - mgl cos q``; near the top a PD loop on
    the angle from upright (``sin(q - pi) = -sin q``) takes over through a steep sigmoid gate on ``-cos q``.
    Output ``action = clip(u, -1, 1)`` and ``target = action`` (1 N*m per unit).
    """
    iface = pendulum_interface()
    nodes = [
        helper.make_node("Slice", ["obs", "i0", "i1", "ax1"], ["sin_q"]),
        helper.make_node("Slice", ["obs", "i1", "i2", "ax1"], ["cos_q"]),
        helper.make_node("Slice", ["obs", "i2", "i3", "ax1"], ["qd_s"]),
        helper.make_node("Mul", ["qd_s", "inv_vel_scale"], ["qd"]),
        # Energy pumping.
        helper.make_node("Mul", ["qd", "qd"], ["qd2"]),
        helper.make_node("Mul", ["qd2", "half_inertia"], ["kinetic"]),
        helper.make_node("Mul", ["cos_q", "mgl"], ["mgl_cos"]),
        helper.make_node("Sub", ["kinetic", "mgl_cos"], ["energy"]),
        helper.make_node("Sub", ["mgl", "energy"], ["e_err"]),
        helper.make_node("Mul", ["e_err", "qd"], ["e_qd"]),
        helper.make_node("Mul", ["e_qd", "k_energy"], ["u_swing_raw"]),
        helper.make_node("Clip", ["u_swing_raw", "lo", "hi"], ["u_swing"]),
        # Balance: u = -kp * sin(q - pi) - kd * qd = kp * sin q - kd * qd.
        helper.make_node("Mul", ["sin_q", "kp"], ["p_term"]),
        helper.make_node("Mul", ["qd", "kd"], ["d_term"]),
        helper.make_node("Sub", ["p_term", "d_term"], ["u_bal_raw"]),
        helper.make_node("Clip", ["u_bal_raw", "lo", "hi"], ["u_bal"]),
        # Gate: ~1 within ~0.25 rad of upright, ~0 elsewhere.
        helper.make_node("Neg", ["cos_q"], ["up"]),
        helper.make_node("Sub", ["up", "gate_at"], ["up_off"]),
        helper.make_node("Mul", ["up_off", "gate_gain"], ["gate_in"]),
        helper.make_node("Sigmoid", ["gate_in"], ["w"]),
        helper.make_node("Sub", ["u_bal", "u_swing"], ["du"]),
        helper.make_node("Mul", ["w", "du"], ["w_du"]),
        helper.make_node("Add", ["u_swing", "w_du"], ["u"]),
        helper.make_node("Clip", ["u", "lo", "hi"], ["action"]),
    ]
    idx = {f"i{k}": numpy_helper.from_array(np.array([k], np.int64), f"i{k}") for k in range(4)}
    inits = [
        *idx.values(),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        _const("inv_vel_scale", 1.0 / 0.125),
        _const("half_inertia", 0.5 * _INERTIA),
        _const("mgl", _MGL),
        _const("k_energy", energy_gain),
        _const("kp", kp),
        _const("kd", kd),
        _const("gate_at", 0.97),
        _const("gate_gain", 300.0),
        _const("lo", -1.0),
        _const("hi", 1.0),
    ]
    t_nodes, t_inits = _target_nodes(iface, 1)
    graph = helper.make_graph(
        nodes + t_nodes,
        "pendulum_controller",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", 4])],
        [
            helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", 1]),
            helper.make_tensor_value_info("target", TensorProto.FLOAT, ["B", 1]),
        ],
        inits + t_inits,
    )
    return _save(graph, metadata(iface, 4, 1, algorithm="handmade_swingup"), path)
