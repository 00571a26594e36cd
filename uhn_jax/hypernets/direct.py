"""The ``direct`` kind: no hypernetwork; the base model's own params are trained (the baseline)."""

from __future__ import annotations

import dataclasses

from uhn_jax.hypernets import base


@dataclasses.dataclass(frozen=True)
class Direct(base.Kind):
    """Trains the base model's params themselves; ``target_params`` is the identity."""

    name: str = "direct"

    def init(self, setup, key):
        return setup.model.init(key), {}

    def target_params(self, setup, params, constants, cond):
        return params

    def task_lr(self, setup) -> float:
        t = setup.train
        return t.direct_lr if t.direct_lr > 0 else t.lr


base.register(Direct())
