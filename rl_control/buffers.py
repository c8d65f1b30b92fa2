"""Rollout storage for on-policy learning, recurrent or not.

The buffer holds one iteration of experience as [T, N, ...] tensors (T steps, N envs). Recurrent
minibatches are whole trajectory pieces: each env's rollout is cut at episode starts and every
``bptt_len`` steps into segments, padded to ``bptt_len`` with a mask, and each segment starts from the
LSTM state recorded during collection (zero at an episode start). So the LSTM runs one fused call per
minibatch with no resets inside a sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from rl_control.advantages import gae


@dataclass(frozen=True)
class Minibatch:
    """One minibatch. Recurrent: leading axes [bptt_len, S]; feed-forward: [M]. ``mask`` matches them
    (all ones for feed-forward minibatches, which are never padded)."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    old_out: torch.Tensor  # mean or logits at collection time, for KL
    mask: torch.Tensor
    state: torch.Tensor | None  # [L, 2, S, H] at each segment's start


class RolloutBuffer:
    """[T, N] storage of one on-policy iteration.

    Args:
        T: steps per env.
        N: number of envs.
        obs_size: observation length D.
        action_shape: () for discrete, (A,) for continuous.
        out_size: size of the policy output (A for Gaussian means, K for logits).
        state_shape: (L, 2, H) of the recurrent state, or None.
    """

    def __init__(
        self,
        T: int,
        N: int,
        obs_size: int,
        action_shape: tuple[int, ...],
        out_size: int,
        state_shape: tuple[int, int, int] | None,
    ) -> None:
        self.T, self.N = T, N
        self.obs = torch.zeros(T, N, obs_size)
        self.actions = torch.zeros(T, N, *action_shape)
        self.log_probs = torch.zeros(T, N)
        self.values = torch.zeros(T, N)
        self.rewards = torch.zeros(T, N)
        self.terminated = torch.zeros(T, N, dtype=torch.bool)
        self.truncated = torch.zeros(T, N, dtype=torch.bool)
        self.final_values = torch.zeros(T, N)
        self.starts = torch.zeros(T, N, dtype=torch.bool)
        self.out = torch.zeros(T, N, out_size)
        self.states = None if state_shape is None else torch.zeros(T, state_shape[0], 2, N, state_shape[2])
        self.advantages = torch.zeros(T, N)
        self.returns = torch.zeros(T, N)

    def compute_returns(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        self.advantages, self.returns = gae(
            self.rewards,
            self.values,
            last_values,
            self.terminated,
            self.truncated,
            self.final_values,
            gamma,
            lam,
        )

    # ---- minibatches -------------------------------------------------------------------------------
    def minibatches(self, num_minibatches: int, bptt_len: int, rng: np.random.Generator) -> Iterator[Minibatch]:
        if self.states is None:
            yield from self._flat_minibatches(num_minibatches, rng)
        else:
            yield from self._sequence_minibatches(num_minibatches, bptt_len, rng)

    def _flat_minibatches(self, num_minibatches: int, rng: np.random.Generator) -> Iterator[Minibatch]:
        total = self.T * self.N
        order = torch.from_numpy(rng.permutation(total))
        # All fields side by side in one [total, F] table: one row gather per minibatch instead of one per
        # field; the fields are column views of the gathered rows.
        flat = [getattr(self, k).reshape(total, -1) for k in _FIELDS]
        table = torch.cat(flat, dim=1)
        widths = [f.shape[1] for f in flat]
        shapes = [getattr(self, k).shape[2:] for k in _FIELDS]
        for idx in torch.tensor_split(order, num_minibatches):
            rows = table.index_select(0, idx)
            columns = torch.split(rows, widths, dim=1)
            fields = {_FIELD_NAMES.get(k, k): c.reshape(len(idx), *shape)
                      for k, c, shape in zip(_FIELDS, columns, shapes, strict=True)}
            yield Minibatch(**fields, mask=torch.ones(len(idx)), state=None)

    def segments(self, bptt_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start step, env index and length of every segment (cut at episode starts and every bptt_len)."""
        starts = self.starts.numpy()
        boundary = starts.copy()
        boundary[0] = True
        since = np.zeros(self.N, dtype=np.int64)
        for t in range(self.T):
            since = np.where(boundary[t], 0, since + 1)
            cut = since == bptt_len
            boundary[t] |= cut
            since[cut] = 0
        t0, n0 = np.nonzero(boundary.T)[1], np.nonzero(boundary.T)[0]  # ordered by env, then time
        ends = np.empty_like(t0)
        same_env_next = np.append(n0[1:] == n0[:-1], False)
        ends[same_env_next] = t0[1:][same_env_next[:-1]]
        ends[~same_env_next] = self.T
        return t0, n0, ends - t0

    def _sequence_minibatches(
        self, num_minibatches: int, bptt_len: int, rng: np.random.Generator
    ) -> Iterator[Minibatch]:
        t0, n0, length = self.segments(bptt_len)
        offsets = np.arange(bptt_len)[:, None]  # [bptt, 1]
        mask_all = offsets < length[None, :]  # [bptt, S]
        t_idx_all = np.where(mask_all, t0[None, :] + offsets, t0[None, :])
        order = rng.permutation(len(t0))
        for seg in np.array_split(order, num_minibatches):
            t_idx = torch.from_numpy(t_idx_all[:, seg])
            n_idx = torch.from_numpy(np.broadcast_to(n0[seg], t_idx.shape).copy())
            fields = {_FIELD_NAMES.get(k, k): getattr(self, k)[t_idx, n_idx] for k in _FIELDS}
            state = self.states[torch.from_numpy(t0[seg]), :, :, torch.from_numpy(n0[seg])]  # [S, L, 2, H]
            yield Minibatch(
                **fields,
                mask=torch.from_numpy(mask_all[:, seg]).float(),
                state=state.permute(1, 2, 0, 3).contiguous(),
            )


_FIELDS = ("obs", "actions", "log_probs", "values", "advantages", "returns", "out")
_FIELD_NAMES = {"out": "old_out"}
