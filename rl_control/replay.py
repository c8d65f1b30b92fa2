"""Preallocated float32 replay buffer filled from N parallel envs, with n-step returns and sequences.

Layout: one ring of ``rows = capacity // N`` rows per env, arrays shaped [rows, N, ...]. Row t of env i
holds the observation o_t and, once the env has stepped from it, the transition taken there:
action a_t, reward r_t and a flags byte (TRANSITION, TERMINATED, TRUNCATED, START). The next
observation is **not stored twice**: it is the observation of row t + 1 (the "index trick"), which is
written as soon as the step returns. Where an episode ends:

- terminated at t: row t + 1 holds the first observation of the next episode (flag START). The
  transition has no bootstrap, so the next observation is never read.
- truncated at t (time limit, unstable physics): row t + 1 holds the **real final observation** from
  ``infos["final_obs"]`` (a row without a transition) and row t + 2 the next episode's first
  observation. Bootstrapping reads row t + 1, so truncated episodes bootstrap from the true final state.

Memory: ``obs`` 4 D + ``actions`` 4 A + ``rewards`` 4 + ``flags`` 1 bytes per row, so
``bytes_per_transition(D, A) = 4 (D + A + 1) + 1``: 97 bytes for HalfCheetah (D = 17, A = 6), 1M
transitions = 92.5 MiB (a layout with a separate next_obs array would need 165 bytes). Truncations cost
one extra row per episode (0.1% for 1000-step episodes). Discrete actions are stored as float32 indices
(exact below 2^24 actions).

Writing order per env: ``start(obs)`` writes o_0 at the head; each ``add(...)`` completes the transition
at the head and writes the next observation(s) ahead of it. The head row therefore always holds an
observation without a transition yet; walking forward from any transition never passes the head, so
n-step returns and sequences are cut there and bootstrap from the newest observation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

TRANSITION = np.uint8(1)
"""The row holds a complete transition (action, reward, flags); rows without it hold only an observation."""
TERMINATED = np.uint8(2)
"""The episode reached a terminal state at this transition: no bootstrap."""
TRUNCATED = np.uint8(4)
"""The episode was cut after this transition; the next row holds its real final observation."""
START = np.uint8(8)
"""The row's observation is the first of an episode."""


def bytes_per_transition(obs_size: int, action_size: int) -> int:
    """Bytes one stored transition occupies: float32 obs, action and reward plus one flags byte."""
    return 4 * (obs_size + action_size + 1) + 1


@dataclass(frozen=True)
class TransitionBatch:
    """Uniformly sampled transitions with n-step returns.

    obs: [B, D]; actions: [B, A] float (or [B] long for discrete); rewards: sum_{k<m} gamma^k r_{t+k}, [B];
    discounts: gamma^m, or 0 when the episode terminated within the m <= n steps, [B];
    next_obs: o_{t+m}, the bootstrap observation (the real final one after a truncation), [B, D].
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    discounts: torch.Tensor
    next_obs: torch.Tensor


@dataclass(frozen=True)
class SequenceBatch:
    """Windows of W consecutive transitions of one env each (recurrent training, 1-step targets).

    obs: o_t .. o_{t+W}, [W + 1, S, D] (row k + 1 is the bootstrap observation of transition k);
    actions: [W, S, A]; rewards: [W, S]; discounts: gamma, or 0 after a termination, [W, S];
    mask: 1 where transition k is a stored transition of the window's first episode, [W, S];
    first_is_start: the window begins at an episode's first step, so a zero LSTM state is exact, [S].
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    discounts: torch.Tensor
    mask: torch.Tensor
    first_is_start: torch.Tensor


class ReplayBuffer:
    """Ring buffer of transitions from ``num_envs`` envs (see the module docstring for the layout).

    Args:
        capacity: rows in total (transitions plus one row per truncated episode), split over the envs.
        num_envs: N, envs adding one transition each per ``add``.
        obs_size: D.
        action_shape: (A,) for continuous actions, () for discrete ones.
        gamma: discount of the n-step returns.
        n_step: n of the n-step returns (1: plain one-step TD targets).
    """

    def __init__(
        self, capacity: int, num_envs: int, obs_size: int, action_shape: tuple[int, ...],
        gamma: float, n_step: int = 1,
    ) -> None:
        rows = capacity // num_envs
        if rows < n_step + 3:
            raise ValueError(f"replay capacity {capacity} is too small for {num_envs} envs and n_step={n_step}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {n_step}")
        self.rows, self.num_envs, self.obs_size = rows, num_envs, obs_size
        self.action_shape, self.gamma, self.n_step = tuple(action_shape), gamma, n_step
        self.obs = np.zeros((rows, num_envs, obs_size), np.float32)
        self.actions = np.zeros((rows, num_envs, *self.action_shape), np.float32)
        self.rewards = np.zeros((rows, num_envs), np.float32)
        self.flags = np.zeros((rows, num_envs), np.uint8)
        self.head = np.zeros(num_envs, np.int64)  # row of the observation awaiting its transition
        self.filled = np.zeros(num_envs, np.int64)  # rows ever written per env, capped at ``rows``
        self.added = 0  # transitions added in total (all envs)
        self._envs = np.arange(num_envs)

    # ---- size ------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.obs.nbytes + self.actions.nbytes + self.rewards.nbytes + self.flags.nbytes

    def __len__(self) -> int:
        """Stored transitions (rows with a complete transition)."""
        return int(np.count_nonzero(self.flags & TRANSITION))

    def can_sample(self, batch_size: int) -> bool:
        return self.added >= batch_size

    # ---- writing ---------------------------------------------------------------------------------------
    def start(self, obs: np.ndarray, envs: np.ndarray | None = None) -> None:
        """Begin fresh episodes (after ``reset``): obs [n, D] become the head rows of ``envs`` (default: all).

        An episode still in flight (e.g. a run resumed with its saved buffer, or the envs of a replaced Ray
        worker) is cut here: its last transition becomes truncated and keeps the observation at the head as
        its real final observation.
        """
        envs = self._envs if envs is None else np.asarray(envs, np.int64)
        head = self.head[envs]
        prev = (head - 1) % self.rows
        f = self.flags[prev, envs]
        open_ = ((f & TRANSITION) != 0) & ((f & (TERMINATED | TRUNCATED)) == 0) & (self.filled[envs] > 0)
        if open_.any():
            self.flags[prev[open_], envs[open_]] |= TRUNCATED
            head[open_] = (head[open_] + 1) % self.rows
        self.head[envs] = head
        self._write_obs(head, envs, obs, START)

    def add(
        self, actions: np.ndarray, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
        next_obs: np.ndarray, final_obs: np.ndarray | None = None,
    ) -> None:
        """Store one vector step.

        Args:
            actions: [N, A] normalized continuous actions or [N] discrete indices.
            rewards: [N].
            terminated, truncated: bool [N], kept apart.
            next_obs: [N, D] the observation the vector env returned (already the next episode's first
                observation where an episode ended, same-step auto-reset).
            final_obs: [N, D] ``infos["final_obs"]``; read where ``truncated``.
        """
        envs, t = self._envs, self.head
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool) & ~terminated
        self.actions[t, envs] = actions
        self.rewards[t, envs] = rewards
        flags = (self.flags[t, envs] & START) | TRANSITION
        flags = flags | np.where(terminated, TERMINATED, 0).astype(np.uint8)
        flags = flags | np.where(truncated, TRUNCATED, 0).astype(np.uint8)
        self.flags[t, envs] = flags
        nxt = (t + 1) % self.rows
        cut = np.flatnonzero(truncated)
        if cut.size:
            if final_obs is None:
                raise ValueError("truncated episodes need final_obs (infos['final_obs']) to bootstrap from")
            self._write_obs(nxt[cut], cut, final_obs[cut], np.uint8(0))
            nxt[cut] = (nxt[cut] + 1) % self.rows
        self._write_obs(nxt, envs, next_obs, np.where(terminated | truncated, START, 0).astype(np.uint8))
        self.head = nxt
        self.added += self.num_envs

    def _write_obs(self, rows: np.ndarray, envs: np.ndarray, obs: np.ndarray, flags: np.ndarray | np.uint8) -> None:
        # Writing an observation row destroys the transition it held in the previous lap of the ring.
        self.obs[rows, envs] = obs
        self.flags[rows, envs] = flags
        self.filled[envs] = np.maximum(self.filled[envs], np.minimum(rows + 1, self.rows))

    # ---- sampling --------------------------------------------------------------------------------------
    def _sample_rows(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Uniform (row, env) pairs that hold a transition (rejection of observation-only rows)."""
        if self.added == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        envs = rng.integers(0, self.num_envs, batch_size)
        rows = (rng.random(batch_size) * self.filled[envs]).astype(np.int64)
        for _ in range(100):
            bad = np.flatnonzero((self.flags[rows, envs] & TRANSITION) == 0)
            if bad.size == 0:
                return rows, envs
            envs[bad] = rng.integers(0, self.num_envs, bad.size)
            rows[bad] = (rng.random(bad.size) * self.filled[envs[bad]]).astype(np.int64)
        raise RuntimeError("replay buffer: could not sample transitions (is it almost empty?)")

    def nstep_indices(self, rows: np.ndarray, envs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n-step return, discount and bootstrap row of the transitions at (rows, envs).

        Walks forward at most n transitions; stops after a terminated one (discount 0), after a truncated one
        (bootstrap from its real final observation in the next row) and at the head (bootstrap from the
        newest observation). Returns (returns [B] float64, discounts [B] float64, bootstrap rows [B]).
        """
        B = rows.shape[0]
        ret = np.zeros(B)
        disc = np.ones(B)
        alive = np.ones(B, bool)
        terminated = np.zeros(B, bool)
        boot = rows.copy()
        for k in range(self.n_step):
            idx = (rows + k) % self.rows
            f = self.flags[idx, envs]
            step = alive & ((f & TRANSITION) != 0)
            ret += np.where(step, disc * self.rewards[idx, envs], 0.0)
            disc = np.where(step, disc * self.gamma, disc)
            boot = np.where(step, (idx + 1) % self.rows, boot)
            terminated |= step & ((f & TERMINATED) != 0)
            alive = step & ((f & (TERMINATED | TRUNCATED)) == 0)
        return ret, np.where(terminated, 0.0, disc), boot

    def sample(self, batch_size: int, rng: np.random.Generator) -> TransitionBatch:
        """``batch_size`` transitions drawn uniformly, with n-step returns (see :class:`TransitionBatch`)."""
        rows, envs = self._sample_rows(batch_size, rng)
        ret, disc, boot = self.nstep_indices(rows, envs)
        actions = torch.from_numpy(self.actions[rows, envs])
        if not self.action_shape:
            actions = actions.long()
        return TransitionBatch(
            obs=torch.from_numpy(self.obs[rows, envs]),
            actions=actions,
            rewards=torch.from_numpy(ret.astype(np.float32)),
            discounts=torch.from_numpy(disc.astype(np.float32)),
            next_obs=torch.from_numpy(self.obs[boot, envs]),
        )

    def sample_sequences(
        self, num_sequences: int, length: int, burn_in: int, rng: np.random.Generator
    ) -> SequenceBatch:
        """Windows of ``length`` transitions (the first ``burn_in`` of them only refresh the LSTM state).

        A window starts at a uniformly drawn transition; if an episode start lies within ``burn_in`` steps
        before it, the window starts there instead, so the first steps of episodes are trained with their
        exact (zero) initial state rather than never. Transitions after the first episode's end or after
        the head are masked out. Targets are one-step (``n_step`` applies to :meth:`sample` only).
        """
        rows, envs = self._sample_rows(num_sequences, rng)
        rows = self._snap_to_episode_start(rows, envs, burn_in)
        idx = (rows[None, :] + np.arange(length + 1)[:, None]) % self.rows  # [W + 1, S]
        f = self.flags[idx, envs[None, :]]  # [W + 1, S]
        is_tr = (f & TRANSITION) != 0
        ended = (f & (TERMINATED | TRUNCATED)) != 0
        # Transition k belongs to the first episode iff every earlier transition continued it.
        cont = np.cumprod(np.concatenate([np.ones((1, rows.size), bool), is_tr[:-2] & ~ended[:-2]]), axis=0)
        mask = (cont.astype(bool) & is_tr[:-1]).astype(np.float32)
        term = (f[:-1] & TERMINATED) != 0
        return SequenceBatch(
            obs=torch.from_numpy(self.obs[idx, envs[None, :]]),
            actions=torch.from_numpy(self.actions[idx[:-1], envs[None, :]]),
            rewards=torch.from_numpy(self.rewards[idx[:-1], envs[None, :]]),
            discounts=torch.from_numpy(np.where(term, 0.0, self.gamma).astype(np.float32)),
            mask=torch.from_numpy(mask),
            first_is_start=torch.from_numpy((f[0] & START) != 0),
        )

    def _snap_to_episode_start(self, rows: np.ndarray, envs: np.ndarray, burn_in: int) -> np.ndarray:
        rows = rows.copy()
        same = np.ones(rows.size, bool)
        start = rows.copy()
        for k in range(1, burn_in + 1):
            r = (rows - k) % self.rows
            f = self.flags[r, envs]
            # Row r continues into r + 1 only if it is a non-final transition of the same episode.
            same &= ((f & TRANSITION) != 0) & ((f & (TERMINATED | TRUNCATED)) == 0) & (r < self.filled[envs])
            start = np.where(same & ((f & START) != 0), r, start)
        return start

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"obs": self.obs, "actions": self.actions, "rewards": self.rewards, "flags": self.flags,
                "head": self.head, "filled": self.filled, "added": self.added}

    def load_state_dict(self, state: dict) -> None:
        if state["obs"].shape != self.obs.shape or state["actions"].shape != self.actions.shape:
            raise ValueError(f"replay state has shape {state['obs'].shape}, this buffer {self.obs.shape}")
        for key in ("obs", "actions", "rewards", "flags"):
            getattr(self, key)[...] = state[key]
        self.head, self.filled, self.added = state["head"].copy(), state["filled"].copy(), int(state["added"])
