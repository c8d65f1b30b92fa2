"""A numpy twin of an MLP Gaussian :class:`ActorCritic`'s forward pass, for collecting rollouts.

Collection evaluates the policy once per vector-env step on a handful of rows; there torch's per-op
dispatch (several microseconds per op) costs more than the arithmetic, while numpy's costs about one.
By default the twin reads the live parameters (numpy views share their memory) and the normalizer's
current statistics at ``sync()``. With ``snapshot=True`` it copies the weights at ``sync()`` instead,
packing actor and critic into one stack of layers (:func:`merge_layer_stacks`): fewer, wider matmuls
per step, valid until the weights change; the runner takes one snapshot per collection, during which
the weights are fixed. It computes exactly the math of ``ActorCritic.act``: normalize, the two MLP
trunks, the Gaussian sample from the caller's torch generator (same random stream as ``act``) and its
log-probability. Policies it cannot mirror (recurrent, discrete, other layer types) get ``None`` from
:func:`numpy_rollout_policy` and are collected through ``ActorCritic.act``. The off-policy actors explore
through the same layer-stack and normalizer helpers (``OffPolicyAlgorithm._numpy_head``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rl_control.networks import ActorCritic
from rl_control.normalizer import RunningNormalizer

_LOG_2PI = math.log(2.0 * math.pi)


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x, out=x)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0, out=x)


_NUMPY_ACTIVATIONS = {nn.Tanh: _tanh, nn.ReLU: _relu}


def _activation(module: nn.Module):
    for cls, fn in _NUMPY_ACTIVATIONS.items():
        if isinstance(module, cls):
            return fn
    return None


def mirrorable(body: nn.Sequential) -> bool:
    return all(isinstance(m, nn.Linear) or _activation(m) is not None for m in body)


def numpy_rollout_policy(policy: ActorCritic, snapshot: bool = False) -> NumpyRolloutPolicy | None:
    """The numpy twin of ``policy``, or None if it is recurrent, discrete or has other layer types.

    ``snapshot``: copy (and merge) the weights instead of sharing them; call ``sync()`` after they change.
    """
    if policy.recurrent or policy.discrete or policy.log_std is None:
        return None
    if not (mirrorable(policy.actor_body) and mirrorable(policy.critic_body)):
        return None
    return NumpyRolloutPolicy(policy, snapshot)


def numpy_layer_stack(body: nn.Sequential, head: nn.Linear) -> list:
    """[(W^T, b) or activation fn] with numpy views of the parameters (W^T: x @ W^T + b).

    Views share memory with the parameters, so in-place optimizer steps are seen without a rebuild."""
    layers = []
    for m in [*body, head]:
        if isinstance(m, nn.Linear):
            layers.append((m.weight.detach().numpy().T, m.bias.detach().numpy()))
        else:
            layers.append(_activation(m))
    return layers


def run_layer_stack(layers: list, x: np.ndarray) -> np.ndarray:
    """x [B, D] through a :func:`numpy_layer_stack` (or a merged one)."""
    for layer in layers:
        if callable(layer):
            x = layer(x)
        else:
            w_t, b = layer
            x = x @ w_t
            x += b
    return x


def normalizer_arrays(norm: RunningNormalizer | None) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(mean, std, clip) as float32 numpy, exactly as ``RunningNormalizer.forward`` casts them; read again
    after every ``update`` (it replaces its tensors)."""
    if norm is None:
        return None
    return norm.mean.float().numpy(), torch.sqrt(norm.var + norm.eps).float().numpy(), norm.clip


def normalize_numpy(norm: tuple[np.ndarray, np.ndarray, float] | None, obs: np.ndarray) -> np.ndarray:
    """``RunningNormalizer.forward`` on float32 numpy with :func:`normalizer_arrays`' statistics."""
    x = np.asarray(obs, dtype=np.float32)
    if norm is None:
        return x
    mean, std, clip = norm
    return np.clip((x - mean) / std, -clip, clip)


def merge_layer_stacks(first: list, second: list) -> list | None:
    """One layer stack computing two stacks side by side on the same input, or None if their shapes differ.

    Each stack is a list of ``(W^T, b)`` pairs (``x @ W^T + b``) and element-wise activation functions;
    both must alternate in the same pattern. The merged stack maps x [B, D] to ``[first(x), second(x)]``
    concatenated on the last axis: the first layer concatenates the two W^T on their output axis (both
    read x), later layers are block-diagonal. At rollout batch sizes a matmul costs its call overhead, not
    its arithmetic, so one wider matmul is cheaper than two; the zero blocks add exact zeros.
    """
    if len(first) != len(second):
        return None
    merged: list = []
    for depth, (a, c) in enumerate(zip(first, second, strict=True)):
        if callable(a) or callable(c):
            if a is not c:  # activations are module-level functions: same function, same layer kind
                return None
            merged.append(a)
            continue
        (wa, ba), (wc, bc) = a, c
        if depth == 0:
            if wa.shape[0] != wc.shape[0]:
                return None
            w = np.concatenate([wa, wc], axis=1)
        else:
            w = np.zeros((wa.shape[0] + wc.shape[0], wa.shape[1] + wc.shape[1]), dtype=np.result_type(wa, wc))
            w[: wa.shape[0], : wa.shape[1]] = wa
            w[wa.shape[0] :, wa.shape[1] :] = wc
        merged.append((w, np.concatenate([ba, bc])))
    return merged


class NumpyRolloutPolicy:
    """``act(obs, noise)`` of a feed-forward Gaussian ActorCritic in float32 numpy. Call ``sync()``
    after the policy's normalizer statistics change, and with ``snapshot=True`` also after its weights
    change (otherwise weights are shared and need no sync)."""

    def __init__(self, policy: ActorCritic, snapshot: bool = False) -> None:
        self.policy, self.snapshot = policy, snapshot
        self.sync()

    def sync(self) -> None:
        """Read the normalizer statistics (it replaces its tensors on update), the log-std and, for a
        snapshot, the weights."""
        policy = self.policy
        self.actor = numpy_layer_stack(policy.actor_body, policy.policy_head)
        self.critic = numpy_layer_stack(policy.critic_body, policy.value_head)
        self.merged = merge_layer_stacks(self.actor, self.critic) if self.snapshot else None
        self.action_size = policy.policy_head.out_features
        self.norm = normalizer_arrays(self.policy.normalizer)
        self.log_std = self.policy.log_std.detach().numpy()
        if self.snapshot:
            self.log_std = self.log_std.copy()
            # act()'s per-step constants, the same float32 arithmetic done once.
            self._consts = (np.exp(self.log_std), np.exp(-self.log_std), self._log_prob_const(self.log_std))

    @staticmethod
    def _log_prob_const(log_std: np.ndarray) -> np.ndarray:
        return log_std.sum() + 0.5 * _LOG_2PI * log_std.shape[-1]

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Gaussian mean [B, A], value [B]) of raw observations [B, D]."""
        x = normalize_numpy(self.norm, obs)
        if self.merged is not None:
            y = run_layer_stack(self.merged, x)
            return y[:, : self.action_size], y[:, self.action_size]
        return run_layer_stack(self.actor, x), run_layer_stack(self.critic, x)[:, 0]

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(action, log_prob, value, mean) given standard-normal ``noise`` [B, A], as ActorCritic.act."""
        mean, value = self.forward(obs)
        if self.snapshot:
            std, inv_std, const = self._consts
        else:
            log_std = self.log_std
            std, inv_std, const = np.exp(log_std), np.exp(-log_std), self._log_prob_const(log_std)
        action = mean + noise * std
        # gaussian_log_prob: z = (action - mean) / std
        z = (action - mean) * inv_std
        log_prob = -0.5 * np.square(z).sum(-1) - const
        return action, log_prob.astype(np.float32), value, mean


def policy_step(
    policy: ActorCritic,
    twin: NumpyRolloutPolicy | None,
    obs: np.ndarray,
    state: torch.Tensor | None,
    starts: np.ndarray,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, torch.Tensor | None, torch.Tensor | None]:
    """One collection step, shared by the runner and the Ray rollout workers so both draw the same actions.

    Returns numpy (action, log-prob, value, policy output) and, for recurrent policies, the state the step
    started from (zeroed where an episode starts: what the buffer stores) and the next state.
    """
    if twin is not None:
        # No torch graph here, so no inference_mode context (its enter/exit cost ~5 us a step).
        noise = torch.randn((len(obs), policy.action_size), generator=generator).numpy()
        return (*twin.act(obs, noise), None, None)
    with torch.inference_mode():
        if state is not None:
            state = state * torch.from_numpy(~starts).float().view(1, 1, -1, 1)
        start_state = state
        action, log_prob, value, out, state = policy.act(torch.from_numpy(obs), state, None, generator)
    return action.numpy(), log_prob.numpy(), value.numpy(), out.numpy(), start_state, state
