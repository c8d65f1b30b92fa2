"""K-FAC: Kronecker-factored approximate curvature for ``nn.Linear`` layers (Martens & Grosse 2015).

For a Linear layer ``s = W a + b`` the Fisher block of ``vec([W | b])`` is approximated as
``F ~= A (x) G`` with ``A = E[a_ a_^T]`` (input activations with a bias column, ``a_ = [a, 1]``) and
``G = E[g g^T]`` (back-propagated gradients ``g = d(-log p(y~|x)) / ds`` of a *sampled* target y~ drawn
from the model's own predictive distribution, so that ``E[g g^T]`` is the Fisher, not the empirical
Fisher). Then ``F^-1 vec(V) = vec(G^-1 V A^-1)``, which costs two small matrix products per layer.

Following ACKTR (Wu et al. 2017, section 3.1):

- factors are running averages over updates (decay ``min(1 - 1/k, stat_decay)`` at the k-th update, as in
  Martens & Grosse 2015, section 5), so a small batch still sees stable curvature;
- Tikhonov damping ``F + lambda I`` is applied exactly in the eigenbasis of the factors:
  ``(A (x) G + lambda I)^-1`` has eigenvalues ``1 / (d_G[i] d_A[j] + lambda)``;
- the eigendecompositions are refreshed only every ``inverse_every`` steps, amortizing the cubic cost;
- the step size is the KL-clipped ``eta = min(eta_max, sqrt(2 delta / (Delta^T F Delta)))`` (their eq. 7),
  so that the quadratic estimate of the KL, ``0.5 eta^2 Delta^T F Delta``, stays <= delta.

Parameters that are not in a covered Linear layer (a state-independent ``log_std``, LSTM weights) are
stepped with the plain gradient, i.e. the identity metric; they enter the quadratic KL estimate as
``||grad||^2``, as in the ACKTR reference implementation's treatment of unsupported ops.

Usage for one update (the Fisher loss is a *sum* over samples, so each row of the back-propagated
gradient is one sample's score)::

    with kfac.capture():                      # forward hooks record each layer's input and output
        out = model(x)
    kfac.update_factors(fisher_loss(out))     # g = d fisher_loss / d(layer outputs); A, G running averages
    kfac.zero_grad(); loss.backward()
    stats = kfac.step()                       # precondition, KL-clip, apply
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class _LayerState:
    """Curvature of one Linear layer: factors, their eigendecompositions, activations being captured."""

    module: nn.Linear
    A: torch.Tensor | None = None  # [in + 1, in + 1] (or [in, in] without bias)
    G: torch.Tensor | None = None  # [out, out]
    eig_a: tuple[torch.Tensor, torch.Tensor] | None = None  # (eigenvalues [in+1], eigenvectors [in+1, in+1])
    eig_g: tuple[torch.Tensor, torch.Tensor] | None = None
    inputs: list[torch.Tensor] = field(default_factory=list)  # captured a, each [n, in] (detached)
    outputs: list[torch.Tensor] = field(default_factory=list)  # captured s, each [n, out] (in the graph)


def _rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Captured [..., F] tensors of one layer -> [n, F]: every leading index (time, batch) is one sample."""
    flat = [x.reshape(-1, x.shape[-1]) for x in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


class KFAC:
    """K-FAC natural-gradient optimizer with a KL-clipped step (ACKTR, Wu et al. 2017).

    Args:
        model: module holding the parameters; its ``nn.Linear`` submodules whose weight is in ``params``
            are preconditioned with their Kronecker factors.
        params: every parameter this optimizer updates (e.g. ``policy.actor_parameters()``). Those outside a
            covered Linear layer get a plain gradient step.
        lr: maximum step size eta_max.
        kl_clip: trust-region radius delta on the quadratic KL estimate; None disables clipping.
        damping: Tikhonov damping lambda added to the Kronecker-factored Fisher.
        stat_decay: running-average decay of the factors (0: use the latest batch only).
        inverse_every: steps between eigendecompositions of the factors (K).

    Raises:
        ValueError: on invalid hyper-parameters or if no Linear layer of ``model`` is in ``params``.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[nn.Parameter],
        lr: float = 0.25,
        kl_clip: float | None = 0.01,
        damping: float = 1e-2,
        stat_decay: float = 0.95,
        inverse_every: int = 10,
    ) -> None:
        if lr <= 0 or damping <= 0 or inverse_every < 1 or not 0.0 <= stat_decay < 1.0:
            raise ValueError(
                f"invalid K-FAC settings: lr={lr}, damping={damping}, inverse_every={inverse_every}, "
                f"stat_decay={stat_decay} (need lr > 0, damping > 0, inverse_every >= 1, 0 <= stat_decay < 1)"
            )
        if kl_clip is not None and kl_clip <= 0:
            raise ValueError(f"kl_clip must be positive or None, got {kl_clip}")
        self.params = list(params)
        ids = {id(p) for p in self.params}
        self.layers = [
            _LayerState(m) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) in ids
        ]
        if not self.layers:
            raise ValueError("K-FAC found no nn.Linear layer of the model among the given parameters")
        covered = {id(p) for s in self.layers for p in s.module.parameters()}
        self.other_params = [p for p in self.params if id(p) not in covered]
        self.lr, self.kl_clip, self.damping = lr, kl_clip, damping
        self.stat_decay, self.inverse_every = stat_decay, inverse_every
        self.steps = 0  # optimizer steps taken
        self.factor_updates = 0  # calls of update_factors

    # ---- curvature statistics ------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record each covered layer's inputs and outputs during the forward passes inside the block.

        Hooks are registered on entry and removed on exit, so the model carries no hooks otherwise
        (export, evaluation and deep copies never see them).
        """

        def make_hook(state: _LayerState):
            def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                state.inputs.append(inputs[0].detach())
                state.outputs.append(output)

            return hook

        handles = [s.module.register_forward_hook(make_hook(s)) for s in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def update_factors(self, fisher_loss: torch.Tensor) -> None:
        """Fold the captured batch into the running factors A and G, then drop the capture.

        Args:
            fisher_loss: scalar, the *sum* over samples of ``-log p(y~ | x)`` with y~ sampled from the
                model (sampled actions for a policy; ``V + N(0, 1)`` targets for a value function), computed
                from the outputs of the forward pass run inside :meth:`capture`. Its graph is retained so
                the caller can back-propagate the real loss through the same forward pass.

        Raises:
            RuntimeError: if nothing was captured or the Fisher loss does not reach a covered layer.
        """
        outputs = [s for state in self.layers for s in state.outputs]
        if not outputs:
            raise RuntimeError("update_factors() needs a forward pass inside `with kfac.capture():` first")
        # One backward pass of the Fisher loss gives every layer's output gradient g (the quantity a
        # module backward hook would see as grad_output) without touching the parameters' .grad.
        grads = torch.autograd.grad(fisher_loss, outputs, retain_graph=True, allow_unused=True)
        # Martens & Grosse 2015, section 5: decay min(1 - 1/k, stat_decay) makes the first k updates a plain
        # average, so the very first batch does not dominate the factors for ~1/(1 - stat_decay) updates.
        k_updates = self.factor_updates + 1
        decay = min(1.0 - 1.0 / k_updates, self.stat_decay)
        offset = 0  # a layer called several times in the forward pass has several captured outputs
        for state in self.layers:
            n_calls = len(state.outputs)
            g_list = grads[offset : offset + n_calls]
            offset += n_calls
            if any(g is None for g in g_list):
                raise RuntimeError(f"the Fisher loss does not depend on layer {state.module}")
            a = _rows(state.inputs)  # [n, in]
            g = _rows(g_list)  # [n, out]
            n = a.shape[0]
            G_batch = g.T @ g / n
            if state.module.bias is None:
                A_batch = a.T @ a / n
            else:
                # E[a_ a_^T] with a_ = [a, 1], assembled from blocks instead of copying a with a ones column:
                # [[E[a a^T], E[a]], [E[a]^T, 1]].
                A_batch = torch.empty(a.shape[1] + 1, a.shape[1] + 1, dtype=a.dtype)
                A_batch[:-1, :-1] = a.T @ a / n
                mean = a.mean(0)
                A_batch[:-1, -1] = mean
                A_batch[-1, :-1] = mean
                A_batch[-1, -1] = 1.0
            if state.A is None or decay == 0.0:
                state.A, state.G = A_batch, G_batch
            else:
                state.A = decay * state.A + (1.0 - decay) * A_batch
                state.G = decay * state.G + (1.0 - decay) * G_batch
            state.inputs.clear()
            state.outputs.clear()
        self.factor_updates += 1

    def _refresh_eigendecompositions(self) -> None:
        for state in self.layers:
            # eigh of a symmetric PSD factor; tiny negative eigenvalues are round-off, clamp them to 0.
            d_A, Q_A = torch.linalg.eigh(state.A)
            d_G, Q_G = torch.linalg.eigh(state.G)
            state.eig_a = (d_A.clamp_min(0.0), Q_A)
            state.eig_g = (d_G.clamp_min(0.0), Q_G)

    # ---- the step ------------------------------------------------------------------------------------
    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def precondition(self, grad: torch.Tensor, state: _LayerState) -> torch.Tensor:
        """``(A (x) G + lambda I)^-1 vec(grad)`` for one layer.

        Args:
            grad: [out, in + 1] gradient of ``[W | b]`` ([out, in] without bias).
            state: the layer's curvature with current eigendecompositions.

        Returns:
            The natural gradient, same shape as ``grad``.
        """
        d_A, Q_A = state.eig_a
        d_G, Q_G = state.eig_g
        v = Q_G.T @ grad @ Q_A  # gradient in the Kronecker eigenbasis
        v = v / (d_G[:, None] * d_A[None, :] + self.damping)
        return Q_G @ v @ Q_A.T

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """Apply one KL-clipped natural-gradient step using the parameters' ``.grad``.

        Returns:
            ``{"step_size": eta, "quadratic_kl": 0.5 eta^2 Delta^T F Delta}``.

        Raises:
            RuntimeError: if :meth:`update_factors` was never called.
        """
        if self.factor_updates == 0:
            raise RuntimeError("K-FAC step() before any update_factors(): no curvature statistics yet")
        if self.steps % self.inverse_every == 0 or self.layers[0].eig_a is None:
            self._refresh_eigendecompositions()
        updates: list[tuple[nn.Parameter, torch.Tensor]] = []
        vFv = 0.0  # Delta^T F Delta = Delta . grad, since F Delta = grad under the same damped metric
        for state in self.layers:
            w, b = state.module.weight, state.module.bias
            gw = w.grad if w.grad is not None else torch.zeros_like(w)
            if b is not None:
                gb = b.grad if b.grad is not None else torch.zeros_like(b)
                grad = torch.cat([gw, gb[:, None]], dim=1)
            else:
                grad = gw
            nat = self.precondition(grad, state)
            vFv += float((nat * grad).sum())
            if b is None:
                updates.append((w, nat))
            else:
                updates += [(w, nat[:, :-1]), (b, nat[:, -1])]
        for p in self.other_params:
            if p.grad is not None:
                updates.append((p, p.grad))
                vFv += float(p.grad.pow(2).sum())
        eta = self.lr
        if self.kl_clip is not None and vFv > 0.0:
            eta = min(self.lr, math.sqrt(2.0 * self.kl_clip / vFv))
        for p, u in updates:
            p.add_(u, alpha=-eta)
        self.steps += 1
        return {"step_size": eta, "quadratic_kl": 0.5 * eta**2 * vFv}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "A": [s.A for s in self.layers],
            "G": [s.G for s in self.layers],
            # The eigendecompositions too: a resumed run then preconditions exactly like an uninterrupted one
            # until the next scheduled refresh.
            "eig_a": [s.eig_a for s in self.layers],
            "eig_g": [s.eig_g for s in self.layers],
            "steps": self.steps,
            "factor_updates": self.factor_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["A"]) != len(self.layers):
            raise ValueError(f"K-FAC state has {len(state['A'])} layers, this optimizer {len(self.layers)}")
        for i, layer in enumerate(self.layers):
            layer.A, layer.G = state["A"][i], state["G"][i]
            layer.eig_a, layer.eig_g = state["eig_a"][i], state["eig_g"][i]
        self.steps, self.factor_updates = state["steps"], state["factor_updates"]
