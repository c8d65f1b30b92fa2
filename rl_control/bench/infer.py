"""Policy inference latency at batch 1: OnnxPolicy.act (onnxruntime) vs torch eager, MLP 2x256 and LSTM-256.

Issue 5's benchmark. For each actor, the same weights run as

- ``ort``: :meth:`deploy.runtime.OnnxPolicy.act`, the public call a robot makes (input validation, the
  recurrent state carried between calls, the action copied out), onnxruntime with one intra-op thread;
- ``ort_raw``: a bare ``InferenceSession.run`` on the same file, for reference (what validation and state
  handling cost on top);
- ``torch``: the torch module in eager mode under ``torch.inference_mode()`` with
  ``torch.set_num_threads(1)``, including the numpy -> tensor -> numpy conversions a node would do.

Actors: obs 48 -> 256 -> 256 -> 12 with tanh (MLP 2x256), and LSTM(48, 256) -> linear 12 (LSTM-256), each
followed by the clip to [-1, 1]. The ONNX graphs are built from the torch weights with ``onnx.helper`` and
checked against torch (max |difference| <= 1e-5) before timing.

Each call is timed on its own (``perf_counter_ns``); contenders run interleaved in blocks (A, B, C, A, B,
C, ...) after a warm-up, and p50/p99 are taken over all calls (>= 10,000 per contender by default).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rl_control.bench import common

OBS, HIDDEN, ACT = 48, 256, 12
TARGETS_US = {"mlp": 30.0, "lstm": 100.0}  # p99 of OnnxPolicy.act, issue 5
TARGET_SPEEDUP = 3.0  # torch p50 / ort p50, issue 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=12_000, help="timed calls per contender (default 12000)")
    parser.add_argument("--block", type=int, default=500, help="calls per interleaved block (default 500)")
    parser.add_argument("--models", default="mlp,lstm", help="comma-separated, out of mlp,lstm")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the actors, check parity, time every contender, print the table, return the JSON payload."""
    report = common.start_report("infer")
    threads = common.set_single_threaded_libraries()  # before torch and onnxruntime load their pools
    import onnxruntime as ort
    import torch

    from deploy.runtime import OnnxPolicy

    torch.set_num_threads(1)
    quick = bool(getattr(args, "quick", False))
    calls, block = (600, 200) if quick else (args.calls, args.block)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"mlp", "lstm"})
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from mlp,lstm")
    torch_peer = common.PeerStatus("torch", True, common.package_version("torch"))
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(64, OBS)).astype(np.float32)  # cycled, the same for every contender

    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in models:
            torch.manual_seed(0)
            module = _torch_actor(torch, kind)
            path = Path(tmp) / f"{kind}.onnx"
            _export(module, kind, path)
            policy = OnnxPolicy(path, intra_op_threads=1)
            max_diff = _parity(torch, module, policy, observations)
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            contenders = {
                "ort": _ort_call(policy, observations),
                "ort_raw": _ort_raw_call(session, kind, observations),
                "torch": _torch_call(torch, module, kind, observations),
            }
            samples = _measure(contenders, calls, block)
            stats = {name: _summary(values) for name, values in samples.items()}
            speedup = common.ratio(stats["torch"]["p50_us"], stats["ort"]["p50_us"])
            results[kind] = {
                "contenders": stats,
                "speedup_p50_torch_over_ort": speedup,
                "parity_max_abs_diff": max_diff,
                "targets": {"ort_p99_us_max": TARGETS_US[kind], "speedup_min": TARGET_SPEEDUP},
                "meets_targets": bool(
                    stats["ort"]["p99_us"] <= TARGETS_US[kind] and (speedup or 0.0) >= TARGET_SPEEDUP
                ),
            }
            for name in contenders:
                s = stats[name]
                rows.append(
                    [
                        f"{_label(kind)} / {name}",
                        f"{s['p50_us']:.1f}",
                        f"{s['p99_us']:.1f}",
                        f"{s['spread'] * 100:.0f}%",
                        f"{s['calls']}",
                        common.fmt_ratio(common.ratio(stats["torch"]["p50_us"], s["p50_us"])),
                    ]
                )
    columns = ["actor / contender", "p50 us", "p99 us", "block spread", "calls", "torch p50 / this p50"]
    caption = (
        f"batch 1, one thread everywhere (torch.set_num_threads(1), onnxruntime intra-op 1, "
        f"{threads or 'thread variables preset'}); "
        f"targets: OnnxPolicy.act p99 <= {TARGETS_US['mlp']:.0f} us (MLP), <= {TARGETS_US['lstm']:.0f} us "
        f"(LSTM), torch p50 / ort p50 >= {TARGET_SPEEDUP:.0f}"
    )
    common.print_table("Inference latency", columns, rows, caption)
    if getattr(args, "markdown", False):
        print(common.markdown_table(columns, rows))
    return common.finish_report(
        report,
        [torch_peer],
        threads={"torch": 1, "onnxruntime_intra_op": 1, "env_set": threads},
        shapes={"obs": OBS, "hidden": HIDDEN, "action": ACT},
        calls_per_contender=calls,
        block=block,
        results=results,
    )


def _label(kind: str) -> str:
    return "MLP 2x256" if kind == "mlp" else "LSTM-256"


# ---- the actors ------------------------------------------------------------------------------------
def _torch_actor(torch: Any, kind: str) -> Any:
    nn = torch.nn

    class MlpActor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.out = (
                nn.Linear(OBS, HIDDEN),
                nn.Linear(HIDDEN, HIDDEN),
                nn.Linear(HIDDEN, ACT),
            )

        def forward(self, obs: Any) -> Any:
            x = torch.tanh(self.l2(torch.tanh(self.l1(obs))))
            return torch.clamp(self.out(x), -1.0, 1.0)

    class LstmActor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.out = nn.LSTM(OBS, HIDDEN), nn.Linear(HIDDEN, ACT)

        def forward(self, obs: Any, h: Any, c: Any) -> tuple[Any, Any, Any]:
            y, (h, c) = self.lstm(obs.unsqueeze(0), (h, c))
            return torch.clamp(self.out(y[0]), -1.0, 1.0), h, c

    module = MlpActor() if kind == "mlp" else LstmActor()
    return module.eval()


def _export(module: Any, kind: str, path: Path) -> None:
    """The actor as an ONNX graph in the export contract (obs [, h_in, c_in] -> action, target [, h, c])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def w(name: str, tensor: Any) -> onnx.TensorProto:
        return numpy_helper.from_array(tensor.detach().numpy().astype(np.float32), name)

    const = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", -1.0), ("hi", 1.0))]
    inputs = [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", OBS])]
    outputs = [
        helper.make_tensor_value_info("action", TensorProto.FLOAT, ["B", ACT]),
        helper.make_tensor_value_info("target", TensorProto.FLOAT, ["B", ACT]),
    ]
    if kind == "mlp":
        m = module
        inits = [w("W1", m.l1.weight), w("b1", m.l1.bias), w("W2", m.l2.weight), w("b2", m.l2.bias)]
        inits += [w("W3", m.out.weight), w("b3", m.out.bias)]
        nodes = [
            helper.make_node("Gemm", ["obs", "W1", "b1"], ["z1"], transB=1),
            helper.make_node("Tanh", ["z1"], ["a1"]),
            helper.make_node("Gemm", ["a1", "W2", "b2"], ["z2"], transB=1),
            helper.make_node("Tanh", ["z2"], ["a2"]),
            helper.make_node("Gemm", ["a2", "W3", "b3"], ["z3"], transB=1),
        ]
        recurrent, hidden, layers = "none", 0, 0
    else:
        lstm = module.lstm

        def reorder(t: Any) -> np.ndarray:
            # torch stacks the gates as (i, f, g, o), ONNX as (i, o, f, c).
            i, f, g, o = np.split(t.detach().numpy(), 4, axis=0)
            return np.concatenate([i, o, f, g], axis=0)

        bias = np.concatenate([reorder(lstm.bias_ih_l0), reorder(lstm.bias_hh_l0)])[None]
        inits = [
            numpy_helper.from_array(reorder(lstm.weight_ih_l0)[None].astype(np.float32), "W"),
            numpy_helper.from_array(reorder(lstm.weight_hh_l0)[None].astype(np.float32), "R"),
            numpy_helper.from_array(bias.astype(np.float32), "Bias"),
            w("W3", module.out.weight),
            w("b3", module.out.bias),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        ]
        nodes = [
            helper.make_node("Unsqueeze", ["obs", "axis0"], ["seq"]),  # [1, B, OBS]
            helper.make_node(
                "LSTM",
                ["seq", "W", "R", "Bias", "", "h_in", "c_in"],
                ["y", "h_out", "c_out"],
                hidden_size=HIDDEN,
            ),
            helper.make_node("Squeeze", ["h_out", "axis0"], ["h_last"]),  # one layer: [B, HIDDEN]
            helper.make_node("Gemm", ["h_last", "W3", "b3"], ["z3"], transB=1),
        ]
        state = [1, "B", HIDDEN]
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in ("h_in", "c_in")]
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state) for n in ("h_out", "c_out")]
        recurrent, hidden, layers = "lstm", HIDDEN, 1
    nodes += [
        helper.make_node("Clip", ["z3", "lo", "hi"], ["action"]),
        helper.make_node("Identity", ["action"], ["target"]),  # 1 unit per unit: a benchmark, no robot
    ]
    graph = helper.make_graph(nodes, f"{kind}_actor", inputs, outputs, inits + const)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    meta = {
        "simreal_format": "1",
        "interface": "",
        "task": "benchmark",
        "algorithm": "none",
        "obs_size": str(OBS),
        "action_size": str(ACT),
        "action_kind": "continuous",
        "recurrent": recurrent,
        "lstm_hidden": str(hidden),
        "lstm_layers": str(layers),
    }
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _parity(torch: Any, module: Any, policy: Any, observations: np.ndarray) -> float:
    """Max |torch - onnxruntime| over a sequence of calls (the LSTM state carried on both sides)."""
    policy.reset()
    h = c = torch.zeros(1, 1, HIDDEN)
    worst = 0.0
    with torch.inference_mode():
        for obs in observations:
            x = torch.from_numpy(obs[None])
            if policy.is_recurrent:
                ref, h, c = module(x, h, c)
            else:
                ref = module(x)
            worst = max(worst, float(np.abs(ref.numpy()[0] - policy.act(obs)).max()))
    if worst > 1e-5:
        raise RuntimeError(
            f"ONNX and torch actors differ by {worst:.2e} (> 1e-5): the benchmark is not like for like"
        )
    return worst


# ---- contenders: each returns a zero-argument call that handles one observation ------------------
def _ort_call(policy: Any, observations: np.ndarray) -> Callable[[], Any]:
    policy.reset()
    it = _cycle(observations)
    return lambda: policy.act(next(it))


def _ort_raw_call(session: Any, kind: str, observations: np.ndarray) -> Callable[[], Any]:
    it = _cycle(observations)
    if kind == "mlp":
        return lambda: session.run(["action"], {"obs": next(it)[None]})
    state = {"h_in": np.zeros((1, 1, HIDDEN), np.float32), "c_in": np.zeros((1, 1, HIDDEN), np.float32)}

    def call() -> Any:
        action, state["h_in"], state["c_in"] = session.run(
            ["action", "h_out", "c_out"], {"obs": next(it)[None], **state}
        )
        return action

    return call


def _torch_call(torch: Any, module: Any, kind: str, observations: np.ndarray) -> Callable[[], Any]:
    it = _cycle(observations)
    if kind == "mlp":

        def call() -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(next(it)[None])).numpy()[0]

        return call
    state = [torch.zeros(1, 1, HIDDEN), torch.zeros(1, 1, HIDDEN)]

    def call_lstm() -> Any:
        with torch.inference_mode():
            action, state[0], state[1] = module(torch.from_numpy(next(it)[None]), state[0], state[1])
            return action.numpy()[0]

    return call_lstm


def _cycle(observations: np.ndarray) -> Any:
    while True:
        yield from observations


# ---- timing ----------------------------------------------------------------------------------------
def _measure(contenders: dict[str, Callable[[], Any]], calls: int, block: int) -> dict[str, list[np.ndarray]]:
    """Per-call latencies (ns), in interleaved blocks after a warm-up of one block each."""
    for fn in contenders.values():
        _time_block(fn, block)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in contenders}
    done = 0
    while done < calls:
        n = min(block, calls - done)
        for name, fn in contenders.items():
            samples[name].append(_time_block(fn, n))
        done += n
    return samples


def _time_block(fn: Callable[[], Any], n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(n):
        t = clock()
        fn()
        out[i] = clock() - t
    return out


def _summary(blocks: list[np.ndarray]) -> dict[str, float]:
    values = np.concatenate(blocks) / 1e3  # us
    block_p50 = common.Timing([float(np.median(b)) / 1e3 for b in blocks])
    return {
        "calls": int(values.size),
        "p50_us": float(np.percentile(values, 50)),
        "p90_us": float(np.percentile(values, 90)),
        "p99_us": float(np.percentile(values, 99)),
        "max_us": float(values.max()),
        "mean_us": float(values.mean()),
        "spread": block_p50.spread,  # (max - min) / median of the per-block medians
    }
