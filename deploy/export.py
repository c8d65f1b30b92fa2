"""Export a trained actor to one ONNX graph, written only after a parity check against torch.

The graph = observation normalizer + actor (+ LSTM with explicit state) + action post-processing:

- inputs: ``obs`` float32 [B, obs_size]; recurrent: ``h_in``, ``c_in`` float32 [1, B, hidden]
- outputs: ``action`` float32 [B, action_size] (deterministic action in policy units, clipped to the
  action range: what the interface's ``last_action`` term sees); ``target`` float32 [B, action_size]
  (actuator targets in interface units, the same formula as ``sim.interface.ActionMapper.targets``);
  recurrent: ``h_out``, ``c_out``. Discrete policies: ``action`` int64 [B] (index), no ``target``.
  Off-policy actors (:class:`rl_control.offpolicy_networks.OffPolicyActor`: SAC, TQC, TD3) go through the
  same contract; their deterministic action is low + (tanh(mean) + 1) / 2 (high - low) (SAC/TQC: the
  squashed Gaussian's mean; TD3: the deterministic output), discrete SAC's is the argmax index.
- metadata: see :func:`build_metadata` (interface JSON, algorithm, sizes, provenance).

The parity gate runs torch and onnxruntime side by side over real rollouts in the task (domain
randomization on, at least two episode resets with the LSTM state reset at each) and refuses to write
the file if any output differs by more than ``tolerance``.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from rl_control.networks import ActorCritic
from rl_control.offpolicy_networks import OffPolicyActor
from sim.interface import ActionMapper, RobotInterface
from sim.randomization import RandomizationConfig
from sim.tasks import make_env

FORMAT_VERSION = "1"
PARITY_TOLERANCE = 1e-5


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree; the message says where."""


class InferencePolicy(nn.Module):
    """The deployed actor: a dedicated module holding only what inference needs, float32 throughout."""

    def __init__(self, policy: ActorCritic | OffPolicyActor, interface: RobotInterface | None) -> None:
        super().__init__()
        self.discrete, self.recurrent = policy.discrete, policy.recurrent
        # "clip": clip the Gaussian mean (ActorCritic); "tanh": squash into the box (off-policy actors).
        self.squash = getattr(policy, "deterministic_squash", "clip")
        self.action_size = policy.action_size
        norm = policy.normalizer
        size = policy.obs_size
        mean = norm.mean.float() if norm is not None else torch.zeros(size)
        std = torch.sqrt(norm.var + norm.eps).float() if norm is not None else torch.ones(size)
        self.register_buffer("obs_mean", mean.clone())
        self.register_buffer("obs_inv_std", (1.0 / std).clone())
        self.obs_clip = norm.clip if norm is not None else float("inf")
        self.lstm = policy.lstms[0] if policy.recurrent else None
        self.body, self.head = policy.actor_body, policy.policy_head
        self.register_buffer("action_low", policy.action_low.clone())
        self.register_buffer("action_high", policy.action_high.clone())
        n = policy.action_size
        if interface is not None and not policy.discrete:
            mapper = ActionMapper(interface)
            offset, scale = mapper.offset, mapper.scale
            tmin, tmax = mapper.target_min, mapper.target_max
        else:
            offset, scale = np.zeros(n), np.ones(n)
            tmin, tmax = np.full(n, -np.inf), np.full(n, np.inf)
        # Infinite limits become the float32 maximum so the ONNX graph holds finite constants.
        big = float(np.finfo(np.float32).max)
        self.register_buffer("target_offset", torch.as_tensor(offset, dtype=torch.float32))
        self.register_buffer("target_scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("target_min", torch.as_tensor(np.clip(tmin, -big, big), dtype=torch.float32))
        self.register_buffer("target_max", torch.as_tensor(np.clip(tmax, -big, big), dtype=torch.float32))

    def forward(self, obs: torch.Tensor, h_in: torch.Tensor | None = None, c_in: torch.Tensor | None = None):
        x = (obs - self.obs_mean) * self.obs_inv_std
        x = torch.clamp(x, -self.obs_clip, self.obs_clip)
        if self.lstm is not None:
            out, (h_out, c_out) = self.lstm(x.unsqueeze(0), (h_in, c_in))
            x = out[0]
        y = self.head(self.body(x))
        if self.discrete:
            action = y.argmax(-1)
            return (action, h_out, c_out) if self.lstm is not None else action
        if self.squash == "tanh":
            half_range = 0.5 * (self.action_high - self.action_low)
            y = self.action_low + (torch.tanh(y[..., : self.action_size]) + 1.0) * half_range
        action = torch.maximum(torch.minimum(y, self.action_high), self.action_low)
        target = self.target_offset + self.target_scale * action
        target = torch.maximum(torch.minimum(target, self.target_max), self.target_min)
        if self.lstm is not None:
            return action, target, h_out, c_out
        return action, target


@dataclass(frozen=True)
class ExportInfo:
    algorithm: str
    task: str
    config_hash: str
    train_steps: int
    train_return: float


def project_version() -> str:
    try:
        return version("simreal")
    except PackageNotFoundError:
        return "0+unknown"


def build_metadata(
    policy: ActorCritic | OffPolicyActor, interface: RobotInterface | None, info: ExportInfo
) -> dict[str, str]:
    hidden = policy.cfg.lstm_hidden if policy.recurrent else 0
    return {
        "simreal_format": FORMAT_VERSION,
        "interface": interface.to_json() if interface is not None else "",
        "task": info.task,
        "algorithm": info.algorithm,
        "obs_size": str(policy.obs_size),
        "action_size": str(policy.action_size),
        "action_kind": "discrete" if policy.discrete else "continuous",
        "recurrent": "lstm" if policy.recurrent else "none",
        "lstm_hidden": str(hidden),
        "lstm_layers": "1" if policy.recurrent else "0",
        "project_version": project_version(),
        "config_hash": info.config_hash,
        "train_steps": str(info.train_steps),
        "train_return": f"{info.train_return:.6g}",
    }


def _io_names(module: InferencePolicy) -> tuple[list[str], list[str]]:
    inputs = ["obs"] + (["h_in", "c_in"] if module.recurrent else [])
    outputs = ["action"] + ([] if module.discrete else ["target"]) + (["h_out", "c_out"] if module.recurrent else [])
    return inputs, outputs


def to_onnx(module: InferencePolicy, obs_size: int, hidden: int) -> onnx.ModelProto:
    """Trace the inference module into an ONNX model (batch axis dynamic)."""
    module.eval()
    inputs, outputs = _io_names(module)
    example = [torch.zeros(1, obs_size)]
    dynamic = {"obs": {0: "batch"}, "action": {0: "batch"}}
    if not module.discrete:
        dynamic["target"] = {0: "batch"}
    if module.recurrent:
        example += [torch.zeros(1, 1, hidden), torch.zeros(1, 1, hidden)]
        for name in ("h_in", "c_in", "h_out", "c_out"):
            dynamic[name] = {1: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The LSTM batch-size warning does not apply: h_in/c_in are explicit graph inputs.
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # LSTM shape checks, constant here
        torch.onnx.export(
            module, tuple(example), buffer, input_names=inputs, output_names=outputs,
            dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def parity_check(
    module: InferencePolicy,
    model_bytes: bytes,
    task: str,
    randomization: RandomizationConfig | None,
    min_steps: int = 1000,
    min_resets: int = 2,
    seed: int = 12345,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """Run torch and onnxruntime side by side in the task; raise :class:`ParityError` on divergence."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    in_names, out_names = _io_names(module)
    hidden = module.lstm.hidden_size if module.recurrent else 0
    env = make_env(task, randomization)
    worst, steps, resets, episode = 0.0, 0, 0, 0
    try:
        while steps < min_steps or resets < min_resets:
            obs, _ = env.reset(seed=seed + episode)
            h = np.zeros((1, 1, hidden), np.float32)
            c = np.zeros((1, 1, hidden), np.float32)
            done, t = False, 0
            while not done:
                x = obs.astype(np.float32)[None]
                feeds = dict(zip(in_names, [x, h, c][: len(in_names)], strict=True))
                onnx_out = session.run(out_names, feeds)
                with torch.no_grad():
                    state = [torch.from_numpy(h), torch.from_numpy(c)] if module.recurrent else []
                    args = [torch.from_numpy(x), *state]
                    torch_out = module(*args)
                torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
                for name, a, b in zip(out_names, onnx_out, torch_out, strict=True):
                    diff = float(np.max(np.abs(a.astype(np.float64) - b.numpy().astype(np.float64))))
                    worst = max(worst, diff)
                    if not diff <= tolerance:
                        raise ParityError(
                            f"ONNX and torch diverge at episode {episode}, step {t} (total step {steps}): "
                            f"output {name!r} differs by {diff:.3g} > {tolerance:g}; onnx={a.ravel()[:6]}, "
                            f"torch={b.numpy().ravel()[:6]}"
                        )
                if module.recurrent:
                    h, c = onnx_out[-2], onnx_out[-1]
                action = torch_out[0][0].numpy()
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                steps, t = steps + 1, t + 1
            resets += 1
            episode += 1
    finally:
        env.close()
    return {"parity_steps": steps, "parity_episodes": episode, "parity_max_abs_diff": worst}


def export_policy(
    policy: ActorCritic | OffPolicyActor,
    interface: RobotInterface | None,
    info: ExportInfo,
    out_path: str | Path,
    randomization: RandomizationConfig | None = None,
    min_steps: int = 1000,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """Export, check, then write ``out_path`` atomically. Returns the parity statistics."""
    module = InferencePolicy(policy, interface)
    hidden = policy.cfg.lstm_hidden if policy.recurrent else 0
    model = to_onnx(module, policy.obs_size, hidden)
    for key, value in build_metadata(policy, interface, info).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "simreal"
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    stats = parity_check(module, data, info.task, randomization, min_steps=min_steps, tolerance=tolerance)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, out_path)
    return stats
