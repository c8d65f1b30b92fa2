"""deploy.runtime.OnnxPolicy with real onnxruntime, on small models built by hand (tests/onnx_builders.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_builders import (
    argmax_policy,
    arm_interface,
    counter_policy,
    linear_policy,
    metadata,
    pendulum_interface,
)

from deploy.runtime import (
    FORMAT_VERSION,
    MetadataError,
    ModelLoadError,
    ObservationError,
    OnnxPolicy,
    PolicyError,
)

REPO = Path(__file__).resolve().parents[1]

# obs_size 4 (pendulum layout), action_size 1: action = clip(0.5*o0 - 1*o1 + 2*o2 + 0*o3 + 0.1, -1, 1).
W_PEND = np.array([[0.5], [-1.0], [2.0], [0.0]], dtype=np.float32)
B_PEND = np.array([0.1], dtype=np.float32)


@pytest.fixture
def pendulum_linear(tmp_path: Path) -> Path:
    return linear_policy(tmp_path / "lin.onnx", W_PEND, B_PEND, pendulum_interface())


def test_linear_policy_outputs_match_hand_computation(pendulum_linear: Path) -> None:
    policy = OnnxPolicy(pendulum_linear)
    # 0.5*0.2 - 1*0.4 + 2*0.1 + 0*0.9 + 0.1 = 0.1 - 0.4 + 0.2 + 0.1 = 0.0
    assert policy.act(np.array([0.2, 0.4, 0.1, 0.9], np.float32)) == pytest.approx([0.0], abs=1e-7)
    # 0.5*1 - 1*0 + 2*0.1 + 0.1 = 0.8
    action, target = policy.step(np.array([1.0, 0.0, 0.1, 0.0], np.float32))
    assert action == pytest.approx([0.8], abs=1e-6)
    assert target == pytest.approx([0.8], abs=1e-6)  # torque joint, 1 N*m per unit
    # 0.5*0 - 1*(-1) + 2*1 + 0.1 = 3.1 -> clipped to 1; the target is clipped to effort_max = 1 too.
    action, target = policy.step(np.array([0.0, -1.0, 1.0, 0.0], np.float32))
    assert action == pytest.approx([1.0]) and target == pytest.approx([1.0])


def test_metadata_is_read(pendulum_linear: Path) -> None:
    policy = OnnxPolicy(pendulum_linear)
    assert (policy.obs_size, policy.action_size, policy.recurrent) == (4, 1, "none")
    assert policy.interface == pendulum_interface()
    assert policy.policy_dt == pytest.approx(0.05)
    assert policy.metadata["simreal_format"] == FORMAT_VERSION
    assert policy.task == "pendulum_swingup" and policy.algorithm == "handmade"
    assert policy.state is None
    assert "pendulum_swingup" in repr(policy)


def test_accepts_float64_and_batch_of_one_and_returns_copies(pendulum_linear: Path) -> None:
    policy = OnnxPolicy(pendulum_linear)
    obs = np.array([[1.0, 0.0, 0.1, 0.0]])  # float64, [1, obs_size]
    first = policy.act(obs)
    assert first.dtype == np.float32 and first.shape == (1,)
    second = policy.act([0.0, 0.0, 0.0, 0.0])  # a list works too
    assert first == pytest.approx([0.8], abs=1e-6), "act must return a copy, not the bound output buffer"
    assert second == pytest.approx([0.1], abs=1e-7)


def test_position_joint_targets_follow_the_action_mapper(tmp_path: Path) -> None:
    from sim.interface import ActionMapper

    iface = arm_interface()
    weight = np.eye(iface.obs_size, iface.action_size, dtype=np.float32) * 3.0
    policy = OnnxPolicy(linear_policy(tmp_path / "arm.onnx", weight, np.zeros(2, np.float32), iface))
    obs = np.zeros(iface.obs_size, np.float32)
    obs[:2] = [0.1, -0.5]  # actions 0.3, -1.0 (clipped from -1.5)
    action, target = policy.step(obs)
    assert action == pytest.approx([0.3, -1.0], abs=1e-6)
    assert target == pytest.approx(ActionMapper(iface).targets(action), abs=1e-6)
    assert target == pytest.approx([0.0 + 0.5 * 0.3, 0.1 - 0.5], abs=1e-6)


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        (np.zeros(3, np.float32), "shape"),
        (np.zeros((2, 4), np.float32), "shape"),
        (np.zeros(4, np.int64), "dtype"),
        (np.zeros(4, bool), "dtype"),
        (np.array([0.0, np.nan, 0.0, 0.0], np.float32), r"NaN/inf at indices \[1\]"),
        (np.array([0.0, 0.0, 0.0, -np.inf]), r"NaN/inf at indices \[3\]"),
        (np.array([0.0, 1e300, 0.0, 0.0]), "NaN/inf"),  # finite float64, inf as float32
    ],
)
def test_bad_observations_raise(pendulum_linear: Path, obs: np.ndarray, message: str) -> None:
    policy = OnnxPolicy(pendulum_linear)
    with pytest.raises(ObservationError, match=message) as info:
        policy.act(obs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, PolicyError)
    # The policy still works after a rejected observation.
    assert policy.act(np.zeros(4, np.float32)) == pytest.approx([0.1], abs=1e-7)


def test_large_finite_observations_are_accepted(pendulum_linear: Path) -> None:
    # 1e20 squared overflows float32; the fast finiteness check must not reject it.
    policy = OnnxPolicy(pendulum_linear)
    assert policy.act(np.array([0.0, 0.0, 1e20, 0.0], np.float32)) == pytest.approx([1.0])


def test_recurrent_state_is_carried_and_reset(tmp_path: Path) -> None:
    policy = OnnxPolicy(counter_policy(tmp_path / "rnn.onnx", obs_size=3, hidden=2, layers=2))
    assert (policy.recurrent, policy.lstm_hidden, policy.lstm_layers) == ("lstm", 2, 2)
    x = np.array([1.0, -0.5, 7.0], np.float32)
    # h_out = h_in + x[:2] per layer; action = sum over 2 layers -> after k calls: 2 * k * x[:2].
    for k in (1, 2, 3):
        action, target = policy.step(x)
        assert action == pytest.approx(2 * k * x[:2])
        assert target == pytest.approx(action)
    h, c = policy.state
    assert h.shape == (2, 1, 2) and h[:, 0] == pytest.approx(np.tile(3 * x[:2], (2, 1)))
    assert c == pytest.approx(np.full((2, 1, 2), 3.0))
    # A rejected observation leaves the state untouched.
    with pytest.raises(ObservationError):
        policy.act(np.array([np.nan, 0, 0], np.float32))
    assert policy.act(x) == pytest.approx(2 * 4 * x[:2])
    policy.reset()
    h, c = policy.state
    assert not h.any() and not c.any()
    assert policy.act(x) == pytest.approx(2 * x[:2])


def test_warm_up_changes_nothing_a_later_call_returns(tmp_path: Path) -> None:
    """The pre-warm run (before a low-rate step is due) must not advance the recurrent state or alter the
    returned action: the counter graph would show any extra step as an extra 2 * x in the action."""
    policy = OnnxPolicy(counter_policy(tmp_path / "rnn.onnx", obs_size=3, hidden=2, layers=2))
    x = np.array([1.0, -0.5, 7.0], np.float32)
    policy.warm_up()  # before any call: runs on the zero observation
    first = policy.act(x)
    policy.warm_up()
    policy.warm_up()
    assert first == pytest.approx(2 * x[:2])  # a copy, untouched by the later runs
    assert policy.act(x) == pytest.approx(2 * 2 * x[:2])
    h, c = policy.state
    assert h[:, 0] == pytest.approx(np.tile(2 * x[:2], (2, 1))) and c == pytest.approx(np.full((2, 1, 2), 2.0))


def test_discrete_policy_returns_an_index(tmp_path: Path) -> None:
    policy = OnnxPolicy(argmax_policy(tmp_path / "disc.onnx", obs_size=3))
    assert policy.interface is None and policy.action_kind == "discrete"
    assert policy.act(np.array([0.1, 0.7, 0.2], np.float32)) == 1
    assert policy.step(np.array([0.9, 0.7, 0.2], np.float32)) == (0, None)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        OnnxPolicy(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxPolicy(bad)
    with pytest.raises(RuntimeError):  # ModelLoadError is a RuntimeError
        OnnxPolicy(tmp_path)  # a directory


def _with_meta(path: Path, **changes: str | None) -> Path:
    """Rewrite a model's metadata: a value replaces, None deletes."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    for key, value in changes.items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    out = path.with_name(f"edited_{len(list(path.parent.iterdir()))}.onnx")
    onnx.save(model, str(out))
    return out


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"simreal_format": None}, "not written by deploy.export"),
        ({"simreal_format": "2"}, "format version '2' is not supported"),
        ({"obs_size": None}, r"missing \['obs_size'\]"),
        ({"obs_size": "four"}, "not an integer"),
        ({"obs_size": "5"}, "interface describes obs_size=4"),
        ({"action_kind": "hybrid"}, "action_kind"),
        ({"recurrent": "gru"}, "recurrent"),
        ({"recurrent": "lstm", "lstm_hidden": "8", "lstm_layers": "1"}, "graph inputs"),
        ({"interface": "{not json"}, "interface metadata is invalid"),
        ({"interface": json.dumps({"schema_version": 99})}, "schema_version 99"),
    ],
)
def test_bad_metadata_raises(pendulum_linear: Path, changes: dict[str, str | None], message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        OnnxPolicy(_with_meta(pendulum_linear, **changes))


def test_metadata_that_disagrees_with_the_graph(tmp_path: Path) -> None:
    # Graph maps 4 -> 1, metadata (no interface) claims 4 -> 2: caught by the dry run at load.
    path = linear_policy(tmp_path / "m.onnx", W_PEND, B_PEND, meta=metadata(None, 4, 2))
    with pytest.raises(MetadataError, match="output 'action' has shape"):
        OnnxPolicy(path)
    path = linear_policy(tmp_path / "n.onnx", W_PEND, B_PEND, meta=metadata(None, 5, 1))
    with pytest.raises(MetadataError, match="input 'obs'"):
        OnnxPolicy(path)


def test_runtime_never_imports_torch_gymnasium_or_mujoco(pendulum_linear: Path, tmp_path: Path) -> None:
    rnn = counter_policy(tmp_path / "rnn.onnx", obs_size=3, hidden=2)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from deploy.runtime import OnnxPolicy
        for path, n in (({str(pendulum_linear)!r}, 4), ({str(rnn)!r}, 3)):
            policy = OnnxPolicy(path)
            policy.reset()
            policy.act(np.zeros(n, np.float32))
        heavy = sorted(m for m in ("torch", "gymnasium", "mujoco") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_bench_infer_quick_runs(tmp_path: Path) -> None:
    """`rlctl bench infer --quick` works and writes its JSON (no speed is asserted: see BENCHMARKS.md)."""
    out = tmp_path / "infer.json"
    cmd = [sys.executable, "-m", "rl_control.cli", "bench", "infer", "--quick", "--json", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"mlp", "lstm"}
    for result in data["results"].values():
        assert result["parity_max_abs_diff"] <= 1e-5
        assert set(result["contenders"]) == {"ort", "ort_raw", "torch"}
        assert result["contenders"]["ort"]["calls"] >= 600
    assert data["environment"]["packages"]["onnxruntime"] and data["load_before"] is not None
