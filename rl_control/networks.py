"""Actor-critic networks: MLP and LSTM, shared or separate trunks, Gaussian or categorical heads.

Recurrent state is explicit data, never hidden inside a module: a tensor ``state`` of shape
[L, 2, B, H] where L is 1 (shared trunk) or 2 (actor LSTM, critic LSTM), index 0/1 of the second axis is
h/c, B the batch and H the hidden size. MLP policies use ``state=None``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from rl_control import distributions as D
from rl_control.config import PolicyConfig
from rl_control.normalizer import RunningNormalizer

# Below this many elements torch.tanh is cheaper than a round trip through numpy.
_NUMPY_TANH_MIN = 4096


class _NumpyTanh(torch.autograd.Function):
    """tanh computed by numpy (on this machine's torch build ~7x faster than torch.tanh for training
    batches); the backward is torch's own tanh_backward on the saved output, so it is differentiable
    again (TRPO's Fisher-vector products back-propagate through it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.from_numpy(np.tanh(x.detach().numpy()))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """torch.tanh, through numpy for large float CPU tensors outside tracing/export."""
    if (
        x.numel() < _NUMPY_TANH_MIN
        or x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
    ):
        return torch.tanh(x)
    return _NumpyTanh.apply(x)


class Tanh(nn.Tanh):
    """nn.Tanh with the faster forward of :func:`fast_tanh` (same module type and state for export)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_tanh(x)


_ACTIVATIONS = {"tanh": Tanh, "elu": nn.ELU, "relu": nn.ReLU}


def mlp(in_size: int, hidden: tuple[int, ...], activation: str) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    size = in_size
    for width in hidden:
        linear = nn.Linear(size, width)
        nn.init.orthogonal_(linear.weight, math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers += [linear, _ACTIVATIONS[activation]()]
        size = width
    return nn.Sequential(*layers), size


def _head(in_size: int, out_size: int, gain: float) -> nn.Linear:
    linear = nn.Linear(in_size, out_size)
    nn.init.orthogonal_(linear.weight, gain)
    nn.init.zeros_(linear.bias)
    return linear


class ActorCritic(nn.Module):
    """Policy and value function.

    Args:
        obs_size: Observation length D.
        action_size: Continuous action length A, or the number of discrete actions K.
        cfg: Network configuration.
        discrete: Categorical policy over ``action_size`` choices instead of a Gaussian.
    """

    def __init__(
        self, obs_size: int, action_size: int, cfg: PolicyConfig, discrete: bool = False,
        action_low: torch.Tensor | None = None, action_high: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        # The action range lives in the module so the deployed (exported) policy clips exactly as training.
        low = torch.full((action_size,), -1.0) if action_low is None else torch.as_tensor(action_low).float()
        high = torch.full((action_size,), 1.0) if action_high is None else torch.as_tensor(action_high).float()
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.cfg, self.discrete = cfg, discrete
        self.obs_size, self.action_size = obs_size, action_size
        self.normalizer = RunningNormalizer(obs_size) if cfg.normalize_obs else None
        self.recurrent = cfg.kind == "lstm"
        trunk_in = obs_size
        self.lstms = nn.ModuleList()
        if self.recurrent:
            n_lstm = 1 if cfg.shared_trunk else 2
            self.lstms.extend(nn.LSTM(obs_size, cfg.lstm_hidden) for _ in range(n_lstm))
            trunk_in = cfg.lstm_hidden
        self.actor_body, actor_out = mlp(trunk_in, cfg.hidden_sizes, cfg.activation)
        if cfg.shared_trunk and not self.recurrent:
            # A shared MLP trunk is the hidden stack itself: one body feeds both heads, and both losses train it.
            self.critic_body, critic_out = self.actor_body, actor_out
        else:
            self.critic_body, critic_out = mlp(trunk_in, cfg.hidden_sizes, cfg.activation)
        self.policy_head = _head(actor_out, action_size, 0.01)
        self.value_head = _head(critic_out, 1, 1.0)
        self.log_std = nn.Parameter(torch.full((action_size,), cfg.init_log_std)) if not discrete else None

    @property
    def shares_trunk(self) -> bool:
        """Actor and critic share parameters (one LSTM, or one MLP body): a value step moves the policy too."""
        return self.critic_body is self.actor_body or (self.recurrent and len(self.lstms) == 1)

    # ---- recurrent state ---------------------------------------------------------------------------
    @property
    def state_shape_per_env(self) -> tuple[int, int, int] | None:
        """(L, 2, H) of the recurrent state, or None for MLP policies."""
        if not self.recurrent:
            return None
        return (len(self.lstms), 2, self.cfg.lstm_hidden)

    def initial_state(self, batch: int) -> torch.Tensor | None:
        if not self.recurrent:
            return None
        L, _, H = self.state_shape_per_env
        return torch.zeros(L, 2, batch, H)

    # ---- forward passes ---------------------------------------------------------------------------
    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return self.normalizer(obs) if self.normalizer is not None else obs

    def _trunks(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: [T, B, D] normalized -> (actor features, critic features, new state)."""
        if not self.recurrent:
            return x, x, None
        outs, new_states = [], []
        for i, lstm in enumerate(self.lstms):
            out, (h, c) = lstm(x, (state[i, 0].unsqueeze(0).contiguous(), state[i, 1].unsqueeze(0).contiguous()))
            outs.append(out)
            new_states.append(torch.stack([h[0], c[0]]))
        return outs[0], outs[-1], torch.stack(new_states)

    def forward(
        self, obs: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Policy parameters and value over a sequence without internal resets.

        Args:
            obs: [T, B, D] raw observations (MLP policies also accept [B, D]).
            state: [L, 2, B, H] recurrent state before the first step (None for MLP).

        Returns:
            (mean or logits [T, B, A], value [T, B], state after the last step).
        """
        x = self.normalize(obs)
        if self.recurrent and x.dim() != 3:
            raise ValueError(f"recurrent policies take [T, B, D] observations, got shape {tuple(obs.shape)}")
        actor_x, critic_x, new_state = self._trunks(x, state)
        actor_features = self.actor_body(actor_x)
        if self.critic_body is self.actor_body and critic_x is actor_x:
            critic_features = actor_features
        else:
            critic_features = self.critic_body(critic_x)
        out = self.policy_head(actor_features)
        value = self.value_head(critic_features).squeeze(-1)
        return out, value, new_state

    def step(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One step for a batch of envs: obs [B, D]; ``starts`` [B] zeroes the state of new episodes."""
        if not self.recurrent:
            return self.forward(obs)
        if starts is not None:
            state = state * (~starts).to(state.dtype).view(1, 1, -1, 1)
        out, value, new_state = self.forward(obs.unsqueeze(0), state)
        return out[0], value[0], new_state

    def distribution(self, out: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob of ``actions``, entropy) under the policy output ``out`` (means or logits)."""
        if self.discrete:
            return D.categorical_log_prob(out, actions), D.categorical_entropy(out)
        # log_std is state-independent: compute on [A] and broadcast, not on a [..., A] copy.
        entropy = D.gaussian_entropy(self.log_std).expand(out.shape[:-1])
        return D.gaussian_log_prob(out, self.log_std, actions), entropy

    def kl(self, old_out: torch.Tensor, new_out: torch.Tensor, old_log_std: torch.Tensor | None = None) -> torch.Tensor:
        """KL(old || new) per sample; Gaussian policies pass the old log-std (state-independent)."""
        if self.discrete:
            return D.categorical_kl(old_out, new_out)
        # [A] log-stds broadcast against the [..., A] means inside gaussian_kl.
        old = self.log_std.detach() if old_log_std is None else old_log_std
        return D.gaussian_kl(old_out, old, new_out, self.log_std)

    @torch.no_grad()
    def act(
        self, obs: torch.Tensor, state: torch.Tensor | None, starts: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sample actions for a batch [B, D]: (action, log_prob, value, policy output, new state)."""
        out, value, new_state = self.step(obs, state, starts)
        if self.discrete:
            probs = torch.softmax(out, -1)
            action = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            log_prob = D.categorical_log_prob(out, action)
        else:
            log_std = self.log_std.expand_as(out)
            action = D.gaussian_sample(out, log_std, generator)
            log_prob = D.gaussian_log_prob(out, log_std, action)
        return action, log_prob, value, out, new_state

    def value_only(self, obs: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """V(obs) for a batch [B, D] given the state before it (used for truncated final observations)."""
        return self.step(obs, state)[1]

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters that shape the policy (trust-region methods constrain these)."""
        params = list(self.actor_body.parameters()) + list(self.policy_head.parameters())
        if self.recurrent:
            params += list(self.lstms[0].parameters())
        if self.log_std is not None:
            params.append(self.log_std)
        return params

    def critic_parameters(self) -> list[nn.Parameter]:
        params = list(self.critic_body.parameters()) + list(self.value_head.parameters())
        if self.recurrent and len(self.lstms) > 1:
            params += list(self.lstms[1].parameters())
        return params

    def clip_action(self, action: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(action, self.action_high), self.action_low)

    def deterministic_action(self, out: torch.Tensor) -> torch.Tensor:
        """The action a deployed policy takes: the Gaussian mean clipped to the action range, or argmax."""
        if self.discrete:
            return out.argmax(-1)
        return self.clip_action(out)
