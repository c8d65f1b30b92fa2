"""Networks of the off-policy algorithms: an exportable actor and critic ensembles computed in one pass.

- :class:`OffPolicyActor`: normalizer (inside the actor, so export carries it) + optional LSTM + MLP +
  head. Kinds: ``squashed_gaussian`` (SAC, TQC: head = [mean, log_std], action = tanh(u)),
  ``deterministic`` (TD3: head = pre-tanh action) and ``categorical`` (discrete SAC: head = logits).
  It offers the same duck-typed inference surface as :class:`rl_control.networks.ActorCritic`
  (``initial_state``, ``step``, ``deterministic_action``, ``normalizer``, ``lstms``, ``actor_body``,
  ``policy_head``), so evaluation and ONNX export treat both alike. Continuous actions are produced in
  the normalized box [-1, 1]^A (what critics and the replay buffer see) and mapped affinely to the env's
  [low, high] by :meth:`OffPolicyActor.scale`.
- :class:`EnsembleLinear` / :class:`CriticEnsemble`: E critics as batched matrix products with weights
  [E, in, out] (``torch.baddbmm``), one call per layer for all critics instead of a Python loop.
- :func:`hidden_products`: within it, the hidden-to-hidden layers of actors and critics multiply in
  bfloat16 (``algo.hidden_matmul``); everywhere else, and by default, everything is float32.

Recurrent state follows the project convention [L, 2, B, H] with L = 1 (the actor's own LSTM).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from rl_control.config import PolicyConfig
from rl_control.networks import mlp
from rl_control.normalizer import RunningNormalizer

ActorKind = Literal["squashed_gaussian", "deterministic", "categorical"]
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the clamp of Haarnoja et al.'s reference implementation

_ACT = {"tanh": torch.tanh, "elu": nn.functional.elu, "relu": torch.relu}
HIDDEN_DTYPES = {"float32": None, "bfloat16": torch.bfloat16}

_hidden_dtype: torch.dtype | None = None  # set by hidden_products(); None: float32 everywhere


@contextlib.contextmanager
def hidden_products(name: str) -> Iterator[None]:
    """Run the hidden-to-hidden layers (width -> width, e.g. 256 -> 256) in ``name`` ("float32", "bfloat16").

    Those layers are most of an off-policy update's arithmetic at the usual sizes (16 of its ~20 matrix
    products for SAC), and a CPU with native bfloat16 (AVX512-BF16, AMX) multiplies them about twice as fast.
    Their inputs, weights and outputs are rounded to bfloat16 (8 significant bits), with float32 accumulation;
    the first layer (raw inputs), the output layers (Q values, action statistics), the losses and the
    optimizer's float32 master weights are untouched, as in mixed-precision training. The critics' skinny
    layers also switch to faster kernels here (``EnsembleLinear._mixed_forward``). Acting, evaluation and
    export run outside this block, so the deployed policy is float32. On a CPU without native bfloat16 this
    is slower, not faster. A module-level setting: one update at a time per process.

    With bfloat16 the block also flushes float32 denormals to zero (``torch.set_flush_denormal``), for speed.
    """
    global _hidden_dtype
    if name not in HIDDEN_DTYPES:
        raise ValueError(f"hidden_matmul must be one of {sorted(HIDDEN_DTYPES)}, got {name!r}")
    saved, _hidden_dtype = _hidden_dtype, HIDDEN_DTYPES[name]
    # Low precision also flushes float32 denormals (below 1.2e-38) to zero in the updates: Adam's second
    # moments and the gradients of a long run drift into that range, where the CPU computes ~100x slower
    # (measured: SAC updates slowed from 5.8 to 6.2 ms over 1,000 updates without it, flat with it).
    flush = _hidden_dtype is not None and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        _hidden_dtype = saved
        if flush:
            torch.set_flush_denormal(False)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _run_body(body: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """An ``mlp`` body (Linear, activation, ...) with its hidden-to-hidden layers in the hidden dtype."""
    if _hidden_dtype is None:
        return body(x)
    for i, layer in enumerate(body):
        if isinstance(layer, nn.Linear) and i > 0:
            x = nn.functional.linear(x.to(_hidden_dtype), layer.weight.to(_hidden_dtype), layer.bias.to(_hidden_dtype))
        else:
            x = layer(x)
    return x.float()


class OffPolicyActor(nn.Module):
    """Policy network of SAC / TD3 / TQC / discrete SAC.

    Args:
        obs_size: D.
        action_size: A (continuous) or K (number of discrete actions).
        cfg: network configuration (``kind``, ``hidden_sizes``, ``activation``, ``lstm_hidden``,
            ``normalize_obs``; ``shared_trunk`` and ``init_log_std`` do not apply here).
        kind: output kind (see the module docstring).
        action_low, action_high: the env's action range [A] (continuous kinds).
    """

    def __init__(
        self, obs_size: int, action_size: int, cfg: PolicyConfig, kind: ActorKind,
        action_low: torch.Tensor | None = None, action_high: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.kind = cfg, kind
        self.discrete = kind == "categorical"
        self.obs_size, self.action_size = obs_size, action_size
        low = torch.full((action_size,), -1.0) if action_low is None else torch.as_tensor(action_low).float()
        high = torch.full((action_size,), 1.0) if action_high is None else torch.as_tensor(action_high).float()
        if not self.discrete and not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            raise ValueError(f"off-policy actors squash into the action box; got unbounded low={low}, high={high}")
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        # Export reads this to emit low + (tanh(mean) + 1) / 2 (high - low) instead of a clipped mean.
        self.deterministic_squash = "argmax" if self.discrete else "tanh"
        self.normalizer = RunningNormalizer(obs_size) if cfg.normalize_obs else None
        self.recurrent = cfg.kind == "lstm"
        self.lstms = nn.ModuleList([nn.LSTM(obs_size, cfg.lstm_hidden)] if self.recurrent else [])
        trunk_in = cfg.lstm_hidden if self.recurrent else obs_size
        self.actor_body, body_out = mlp(trunk_in, cfg.hidden_sizes, cfg.activation)
        out = 2 * action_size if kind == "squashed_gaussian" else action_size
        self.policy_head = nn.Linear(body_out, out)

    # ---- recurrent state (same convention as ActorCritic) ---------------------------------------------
    @property
    def state_shape_per_env(self) -> tuple[int, int, int] | None:
        return (1, 2, self.cfg.lstm_hidden) if self.recurrent else None

    def initial_state(self, batch: int) -> torch.Tensor | None:
        return torch.zeros(1, 2, batch, self.cfg.lstm_hidden) if self.recurrent else None

    # ---- forward passes ---------------------------------------------------------------------------
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.normalizer(obs) if self.normalizer is not None else obs

    def head(
        self, x: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Head output from normalized observations.

        Args:
            x: [B, D] (MLP) or [T, B, D] (LSTM, a sequence without internal resets).
            state: [1, 2, B, H] before the first step (LSTM).

        Returns:
            (head output [..., 2A | A | K], state after the last step or None).
        """
        new_state = None
        if self.recurrent:
            h, c = state[0, 0].unsqueeze(0).contiguous(), state[0, 1].unsqueeze(0).contiguous()
            x, (h, c) = self.lstms[0](x, (h, c))
            new_state = torch.stack([h[0], c[0]]).unsqueeze(0)
        return self.policy_head(_run_body(self.actor_body, x)), new_state

    def step(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None, torch.Tensor | None]:
        """One step for a batch of envs, raw obs [B, D]: (head output [B, .], None, new state).

        The ``None`` keeps the (output, value, state) shape of ActorCritic.step; ``starts`` [B] zeroes the
        state of envs that begin an episode.
        """
        x = self.normalize(obs)
        if not self.recurrent:
            return self.head(x)[0], None, None
        if starts is not None:
            state = state * (~starts).to(state.dtype).view(1, 1, -1, 1)
        out, new_state = self.head(x.unsqueeze(0), state)
        return out[0], None, new_state

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, clamped log_std) of a squashed-Gaussian head output, each [..., A]."""
        mean, log_std = out.split(self.action_size, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def unit_action(self, out: torch.Tensor) -> torch.Tensor:
        """The deterministic action in the normalized box: tanh(mean) or tanh(head), [..., A]."""
        if self.kind == "squashed_gaussian":
            return torch.tanh(out[..., : self.action_size])
        return torch.tanh(out)

    def scale(self, unit_action: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1]^A to the env's [low, high] (affine; exact at the bounds)."""
        return self.action_low + (unit_action + 1.0) * 0.5 * (self.action_high - self.action_low)

    def deterministic_action(self, out: torch.Tensor) -> torch.Tensor:
        """The action a deployed policy takes, in env units: scaled tanh(mean), or the argmax index."""
        if self.discrete:
            return out.argmax(-1)
        return self.scale(self.unit_action(out))


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched product: y_e = x_e W_e + b_e.

    Weights are [E, in, out]; each member is initialized like ``nn.Linear`` (uniform in +-1/sqrt(in)).
    """

    def __init__(self, ensemble: int, in_size: int, out_size: int, hidden: bool = False) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_size)
        self.weight = nn.Parameter(torch.empty(ensemble, in_size, out_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_size).uniform_(-bound, bound))
        self.hidden = hidden  # hidden-to-hidden: multiplies in the hidden dtype inside hidden_products()

    def forward(self, x: torch.Tensor, detach_params: bool = False, members: slice | None = None) -> torch.Tensor:
        """x: [E', B, in] or [B, in] (shared by all members) -> [E', B, out].

        ``detach_params`` computes gradients for the input only (the actor's loss differentiates the critic
        with respect to the action; skipping the weight gradients saves about a third of that backward pass).
        ``members`` selects a subset (e.g. TD3's actor loss uses the first critic only).
        """
        w, b = self.weight, self.bias
        if members is not None:
            w, b = w[members], b[members]
        if detach_params:
            w, b = w.detach(), b.detach()
        if _hidden_dtype is not None:
            return self._mixed_forward(x, w, b)
        if x.dim() == 2:
            return torch.matmul(x, w) + b  # [B, in] @ [E, in, out] broadcasts to [E, B, out]
        return torch.baddbmm(b, x, w)

    def _mixed_forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The forward inside ``hidden_products("bfloat16")``: hidden layers in bfloat16, and the skinny layers
        without batched products, which MKL runs far below its peak at these shapes (measured in an update at
        HalfCheetah sizes: a [B, 23] x [2, 23, 256] first layer ~280 us as torch.matmul folds it, ~20 us as one
        [B, 23] x [23, 512] product; a 256 -> 1 output layer as a batched product ~150 us forward). Together
        12-15% of a bfloat16 SAC update. They sum in a different order than the float32 path, which keeps
        the batched products so that seeded float32 runs reproduce bit for bit."""
        if self.hidden:
            x, w, b = x.to(_hidden_dtype), w.to(_hidden_dtype), b.to(_hidden_dtype)
        E, n_in, n_out = w.shape
        if n_out == 1 and x.dim() == 3:
            # A matrix-vector product per member: element-wise product and sum. A low-precision x (after a
            # hidden layer) is promoted inside the product, the same float32 values as casting it first, without
            # writing a float32 copy of the [E, B, in] activations.
            return (x * w.transpose(1, 2)).sum(-1, keepdim=True) + b
        if x.dtype != w.dtype:
            x = x.to(w.dtype)  # the output layer after a low-precision hidden layer
        if x.dim() == 2:  # one input shared by all members: one product against [in, E * out]
            y = torch.addmm(b.transpose(0, 1).reshape(1, E * n_out), x, w.transpose(0, 1).reshape(n_in, E * n_out))
            return y.view(-1, E, n_out).transpose(0, 1)  # [E, B, out], a strided view the next bmm reads as is
        return torch.baddbmm(b, x, w)


class CriticEnsemble(nn.Module):
    """E MLP critics evaluated together: input [B, in] -> output [E, B, out].

    ``out`` is 1 for Q(s, a), K for per-action Q(s, .) of discrete SAC, M quantiles for TQC.
    """

    def __init__(self, in_size: int, out_size: int, hidden: tuple[int, ...], ensemble: int, activation: str) -> None:
        super().__init__()
        sizes = (in_size, *hidden, out_size)
        last = len(sizes) - 2
        self.layers = nn.ModuleList(
            EnsembleLinear(ensemble, a, b, hidden=0 < i < last)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
        )
        self.act = _ACT[activation]
        self.ensemble, self.out_size = ensemble, out_size

    def forward(self, x: torch.Tensor, detach_params: bool = False, members: slice | None = None) -> torch.Tensor:
        if _hidden_dtype is not None and x.dim() == 2 and self._relu_q:
            # The same values as the layers below, in fewer passes (see _PairedReluQ).
            params = [t if members is None else t[members] for layer in self.layers for t in (layer.weight, layer.bias)]
            if not torch.is_grad_enabled():  # e.g. the target critic
                return _relu_q_forward(x, params)[0]
            if detach_params:
                params = [t.detach() for t in params]
            return _PairedReluQ.apply(x, x[:0], *params)  # an empty probe: a plain critic pass
        for i, layer in enumerate(self.layers):
            x = layer(x, detach_params, members)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x

    def train_and_probe(
        self, x_train: torch.Tensor, x_probe: torch.Tensor, probe_members: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(critic(x_train), critic(x_probe, detach_params=True, members=probe_members)) from inputs [B, in]:
        [E, B, out] and [E', B', out].

        The pair every actor-critic update needs: Q of the stored actions, whose loss trains the critic, and
        Q of the actor's actions, whose loss reaches only the actor (through the input). Inside
        ``hidden_products`` a ReLU Q ensemble computes both in one pass over the stacked batch
        (:class:`_PairedReluQ`); elsewhere these are the two calls above.
        """
        if _hidden_dtype is None or not self._relu_q:
            return self(x_train), self(x_probe, detach_params=True, members=probe_members)
        params = [t for layer in self.layers for t in (layer.weight, layer.bias)]
        q = _PairedReluQ.apply(x_train, x_probe, *params)  # the probe through all members: one batched pass
        q_probe = q[:, x_train.shape[0] :]
        return q[:, : x_train.shape[0]], q_probe if probe_members is None else q_probe[probe_members]

    @property
    def _relu_q(self) -> bool:
        """ReLU, at least one hidden-to-hidden layer and one output: SAC's and TD3's Q."""
        return self.act is torch.relu and len(self.layers) >= 3 and self.out_size == 1


def _relu_q_forward(
    x: torch.Tensor, params: tuple[torch.Tensor, ...] | list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A ReLU Q ensemble's forward inside ``hidden_products``: (Q [E, B, 1], the bfloat16 activations of each
    hidden layer, the bfloat16 hidden weights). The values of the layer-by-layer path, in fewer passes over
    the activations (ReLUs in place, the cast written straight into the layout the batched products read)."""
    ws, bs = params[0::2], params[1::2]
    E, n_in, width = ws[0].shape
    # First layer: one [B, in] x [in, E * width] product in float32, ReLU in place, then one cast into the
    # member-major bfloat16 layout (ReLU and rounding commute).
    h = torch.addmm(bs[0].transpose(0, 1).reshape(1, E * width), x, ws[0].transpose(0, 1).reshape(n_in, E * width))
    acts = [h.relu_().view(-1, E, width).transpose(0, 1).to(_hidden_dtype, memory_format=torch.contiguous_format)]
    low_ws = []
    for w, b in zip(ws[1:-1], bs[1:-1], strict=True):
        low_ws.append(w.to(_hidden_dtype))
        acts.append(torch.baddbmm(b.to(_hidden_dtype), acts[-1], low_ws[-1]).relu_())
    q = (acts[-1] * ws[-1].transpose(1, 2)).sum(-1, keepdim=True) + bs[-1]  # promoted to float32 in the product
    return q, acts, low_ws


class _PairedReluQ(torch.autograd.Function):
    """:meth:`CriticEnsemble.train_and_probe` inside ``hidden_products``, forward and backward written out.

    The same forward values as two calls of the layer-by-layer path (``EnsembleLinear._mixed_forward``):
    float32 first layer, its ReLU output rounded to bfloat16, bfloat16 hidden layers, a float32 output layer
    reading the bfloat16 activations. Why by hand: on a CPU with AMX the products are a small share of a SAC
    update and per-op cost and element-wise passes the rest; stacking the two batches halves the number of
    ops (measured: the two forward passes 1.33 ms -> 0.97 ms), and the backward takes the weight gradients
    from the training rows only and the input gradient from the probe rows only, which autograd cannot be
    told, with ReLU backward in place and no float32 copies of the hidden activations' gradients.

    Inputs: x_train [B, in], x_probe [B', in] (B' may be 0: a plain pass), then (weight [E, in, out], bias
    [E, 1, out]) per layer.
    Output: [E, B + B', 1].
    """

    @staticmethod
    def forward(ctx, x_train: torch.Tensor, x_probe: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x_train, x_probe])
        q, acts, low_ws = _relu_q_forward(x, params)
        ctx.n_train = x_train.shape[0]
        ctx.save_for_backward(x, params[0], params[-2].transpose(1, 2), *acts, *low_ws)
        return q

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor):
        x, w0, w_out, *rest = ctx.saved_tensors
        n, n_hidden = ctx.n_train, (len(rest) - 1) // 2
        acts, low_ws = rest[: n_hidden + 1], rest[n_hidden + 1 :]
        need_x_train, need_x_probe = ctx.needs_input_grad[:2]
        need_params = any(ctx.needs_input_grad[2:])
        grads: list[torch.Tensor | None] = [None] * (2 * (n_hidden + 2))
        top = acts[-1]
        if need_params:  # weight and bias gradients from the training rows [:, :n] only
            grads[-2] = (top[:, :n] * grad_q[:, :n]).sum(1).unsqueeze(-1)  # [E, width, 1], float32
            grads[-1] = grad_q[:, :n].sum(1, keepdim=True)
        # Activation gradients in bfloat16 from here on, as in mixed-precision training; each op writes its
        # result once, in place where it can (an `out=` of another dtype would add a temporary and a copy).
        grad_a = grad_q.to(top.dtype) * w_out.to(top.dtype)  # (backward may run outside hidden_products)
        for i in reversed(range(n_hidden)):
            # Through the ReLU in place: the activation is zero exactly where the ReLU cut.
            grad_h = torch.ops.aten.threshold_backward.grad_input(grad_a, acts[i + 1], 0, grad_input=grad_a)
            grad_a = torch.bmm(grad_h, low_ws[i].transpose(1, 2))
            if need_params:
                # Zeroing the probe rows lets the products read whole, contiguous tensors (a row slice would
                # be copied first).
                grad_h[:, n:] = 0
                grads[2 * (i + 1)] = torch.bmm(acts[i].transpose(1, 2), grad_h).float()
                grads[2 * (i + 1) + 1] = grad_h.sum(1, keepdim=True, dtype=torch.float32)
        grad_h0 = torch.ops.aten.threshold_backward.grad_input(grad_a, acts[0], 0, grad_input=grad_a).float()
        grad_x = torch.bmm(grad_h0, w0.transpose(1, 2)).sum(0) if need_x_train or need_x_probe else None
        if need_params:
            grad_h0[:, n:] = 0
            grads[0] = torch.bmm(x.transpose(0, 1).expand(grad_h0.shape[0], -1, -1), grad_h0)
            grads[1] = grad_h0.sum(1, keepdim=True)
        return (grad_x[:n] if need_x_train else None, grad_x[n:] if need_x_probe else None, *grads)


def target_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy used as a target network (no gradients, updated by polyak averaging)."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
