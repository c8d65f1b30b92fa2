"""A numpy twin of an MLP Gaussian :class:`ActorCritic`'s forward pass, for collecting rollouts.

Collection evaluates the policy once per vector-env step on a handful of rows; there torch's per-op
dispatch (several microseconds per op) costs more than the arithmetic, while numpy's costs about one.
The twin reads the live parameters (numpy views share their memory) and the normalizer's current
statistics at ``sync()``, and computes exactly the math of ``ActorCritic.act``: normalize, the two MLP
trunks, the Gaussian sample from the caller's torch generator (same random stream as ``act``) and its
log-probability. Policies it cannot mirror (recurrent, discrete, other layer types) get ``None`` from
:func:`numpy_rollout_policy` and are collected through ``ActorCritic.act``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rl_control.networks import ActorCritic

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


def _mirrorable(body: nn.Sequential) -> bool:
    return all(isinstance(m, nn.Linear) or _activation(m) is not None for m in body)


def numpy_rollout_policy(policy: ActorCritic) -> NumpyRolloutPolicy | None:
    """The numpy twin of ``policy``, or None if it is recurrent, discrete or has other layer types."""
    if policy.recurrent or policy.discrete or policy.log_std is None:
        return None
    if not (_mirrorable(policy.actor_body) and _mirrorable(policy.critic_body)):
        return None
    return NumpyRolloutPolicy(policy)


class NumpyRolloutPolicy:
    """``act(obs, noise)`` of a feed-forward Gaussian ActorCritic in float32 numpy. Call ``sync()``
    after the policy's normalizer statistics change (weights are shared and need no sync)."""

    def __init__(self, policy: ActorCritic) -> None:
        self.policy = policy
        self.actor = self._layers(policy.actor_body, policy.policy_head)
        self.critic = self._layers(policy.critic_body, policy.value_head)
        self.sync()

    @staticmethod
    def _layers(body: nn.Sequential, head: nn.Linear) -> list:
        """[(W^T, b) or activation fn] with numpy views of the parameters (W^T: x @ W^T + b)."""
        layers = []
        for m in [*body, head]:
            if isinstance(m, nn.Linear):
                layers.append((m.weight.detach().numpy().T, m.bias.detach().numpy()))
            else:
                layers.append(_activation(m))
        return layers

    def sync(self) -> None:
        """Read the normalizer statistics (it replaces its tensors on update) and the log-std."""
        norm = self.policy.normalizer
        if norm is None:
            self.norm = None
        else:
            # As RunningNormalizer.forward: float64 statistics cast to the observation dtype.
            std = torch.sqrt(norm.var + norm.eps).float().numpy()
            self.norm = (norm.mean.float().numpy(), std, norm.clip)
        self.log_std = self.policy.log_std.detach().numpy()

    @staticmethod
    def _run(layers: list, x: np.ndarray) -> np.ndarray:
        for layer in layers:
            if callable(layer):
                x = layer(x)
            else:
                w_t, b = layer
                x = x @ w_t
                x += b
        return x

    def forward(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Gaussian mean [B, A], value [B]) of raw observations [B, D]."""
        x = np.asarray(obs, dtype=np.float32)
        if self.norm is not None:
            mean, std, clip = self.norm
            x = np.clip((x - mean) / std, -clip, clip)
        return self._run(self.actor, x), self._run(self.critic, x)[:, 0]

    def act(self, obs: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(action, log_prob, value, mean) given standard-normal ``noise`` [B, A], as ActorCritic.act."""
        mean, value = self.forward(obs)
        log_std = self.log_std
        action = mean + noise * np.exp(log_std)
        # gaussian_log_prob: z = (action - mean) / std
        z = (action - mean) * np.exp(-log_std)
        log_prob = -0.5 * np.square(z).sum(-1) - (log_std.sum() + 0.5 * _LOG_2PI * mean.shape[-1])
        return action, log_prob.astype(np.float32), value, mean
