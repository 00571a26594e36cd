"""The ``ewc`` kind: the base model trained directly with the online EWC penalty (Schwarz et al.
2018, "Progress & compress", the online form of Kirkpatrick et al. 2017's elastic weight
consolidation), a continual-learning baseline of von Oswald et al. 2020.

The params are the base model's own (as the ``direct`` kind's); the frozen constants hold the
running diagonal Fisher ``F`` and the anchor ``theta*`` (the params at the end of the last
finished task), both pytrees shaped like the params. Every task step adds

    lam / 2 * sum_i gamma * F_i * (theta_i - theta*_i)^2

(Schwarz et al.'s eq. 8, the penalty of hypnettorch's and van de Ven's online EWC, whose running
Fisher enters decayed by ``gamma``). After each task the continual driver
(:mod:`uhn_jax.training.continual`) accumulates ``F <- gamma * F + F_task`` (:func:`accumulate`)
and sets ``theta*`` to the current params. ``F_task`` is the true Fisher of the model's
predictive distribution on ``fisher_examples`` of the task's training inputs
(:func:`fisher_diagonal`): for each input the expectation over the model's classes is taken
exactly, ``sum_c p(c|x) (d log p(c|x) / d theta)^2``, instead of sampling one label (van de
Ven's ``fisher_labels='all'``), then averaged over the inputs. Before the first task ends
``F = 0``, so the penalty is 0 and the run is fine-tuning.

The kind reads its settings from ``setup.ewc`` (:class:`Settings`), so it runs only under the
continual driver: a single-run config with ``mode=ewc`` is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from uhn_jax.core import checks
from uhn_jax.hypernets import base, direct

#: Examples whose per-example Fisher is computed at once (vmapped) in :func:`fisher_diagonal`.
FISHER_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class Settings:
    """Online EWC (config group ``ewc``).

    Attributes:
      lam: weight of the penalty (``>= 0``; 0 is fine-tuning).
      gamma: decay of the earlier tasks' Fisher, in ``(0, 1]`` (1 = plain accumulation).
      fisher_examples: training inputs of a task the Fisher is averaged over (at most the
        task's training split).
    """

    lam: float = 1e3
    gamma: float = 1.0
    fisher_examples: int = 200

    def validate(self) -> Settings:
        """Checks every field: a ``ValueError`` names it (``ewc.<field>``)."""
        for name in ("lam", "gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"ewc.{name} must be a finite number, got {v!r}")
        if not self.lam >= 0:
            raise ValueError(f"ewc.lam must be a number >= 0, got {self.lam!r}")
        checks.in_range("ewc.gamma", self.gamma, 0.0, 1.0, lo_open=True)
        checks.positive_int("ewc.fisher_examples", self.fisher_examples)
        return self


def penalty(params, anchor, fisher, gamma: float) -> jax.Array:
    """``1/2 * sum_i gamma * F_i * (theta_i - theta*_i)^2`` over every leaf (without ``lam``)."""
    terms = jax.tree.map(lambda p, a, f: jnp.sum(f * (p - a) ** 2), params, anchor, fisher)
    return 0.5 * gamma * sum(jax.tree.leaves(terms))


def accumulate(fisher, fisher_task, gamma: float):
    """Online EWC's running Fisher after a task: ``gamma * F + F_task``."""
    return jax.tree.map(lambda f, t: gamma * f + t, fisher, fisher_task)


def _example_fisher(setup, params, cond, head, x):
    """``sum_c p(c|x) (d log p(c|x) / d params)^2`` for one input ``x``; with multi-head
    outputs (``setup.head_size``), over the classes of head ``head``."""

    def log_p(p):
        logits = base.apply_base(setup, p, x[None], cond)[0]
        if setup.head_size:
            logits = jax.lax.dynamic_slice_in_dim(logits, head * setup.head_size, setup.head_size)
        return jax.nn.log_softmax(logits)

    jac = jax.jacrev(log_p)(params)  # every leaf [C, *leaf.shape]
    prob_C = jax.lax.stop_gradient(jnp.exp(log_p(params)))
    return jax.tree.map(lambda j: jnp.tensordot(prob_C, j**2, axes=1), jac)


@functools.partial(jax.jit, static_argnums=0)
def fisher_diagonal(setup, params, cond, x, head=0):
    """The diagonal true Fisher of the base model at ``params`` on the (prepared) inputs
    ``x[B, ...]``: the mean over the inputs of :func:`_example_fisher` (of output head
    ``head`` when the outputs are heads, ``setup.head_size``), a pytree like ``params``.
    Chunks of :data:`FISHER_CHUNK` inputs are vmapped and summed in a scan, so memory holds
    one chunk's per-example gradients."""
    n = x.shape[0]
    pad = -n % FISHER_CHUNK
    x_KCX = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, FISHER_CHUNK, *x.shape[1:])
    valid_KC = (jnp.arange(n + pad) < n).astype(jnp.float32).reshape(-1, FISHER_CHUNK)

    def body(total, chunk):
        xs, valid = chunk
        per = jax.vmap(functools.partial(_example_fisher, setup, params, cond, head))(xs)
        total = jax.tree.map(lambda t, f: t + jnp.tensordot(valid, f, axes=1), total, per)
        return total, None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, (x_KCX, valid_KC))
    return jax.tree.map(lambda t: t / n, total)


@dataclasses.dataclass(frozen=True)
class Ewc(direct.Direct):
    """The base model's own params with the online EWC penalty; see the module docstring."""

    name: str = "ewc"

    def validate(self, exp) -> None:
        raise ValueError(
            "mode 'ewc' trains a sequence of tasks; run it with the continual driver "
            "(uhn_jax.training.continual.run and configs/continual.py, method ewc), not as a "
            "single run"
        )

    def init(self, setup, key):
        if setup.ewc is None:
            raise ValueError("mode 'ewc' needs setup.ewc (hypernets.ewc.Settings)")
        params = setup.model.init(key)
        zeros = jax.tree.map(jnp.zeros_like, params)
        # Separate buffers: the step donates every leaf of the state.
        return params, {"fisher": zeros, "anchor": jax.tree.map(jnp.zeros_like, params)}

    def extra_loss(self, setup, params, constants, cond, aux):
        s = setup.ewc
        if s.lam == 0:
            return jnp.zeros(()), {}
        reg = penalty(params, constants["anchor"], constants["fisher"], s.gamma)
        return s.lam * reg, {"ewc_penalty": reg}


base.register(Ewc())
