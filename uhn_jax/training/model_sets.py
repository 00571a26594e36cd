"""Model sets for multi-model UHN training (spec §5.1): sample, deduplicate, save, split.

A model set is a list of architectures drawn from a *family*: the ranges each architectural
choice is sampled from. Architectures are plain dicts of ``model`` config fields (for example
``{"family": "mlp", "widths": [96, 64]}``), so any of them can be turned into an
:class:`~uhn_jax.config.ModelConfig` with :func:`model_config`.

Sets are saved as versioned JSON (:data:`SCHEMA_VERSION`) holding the family, the sampling seed
and the models in sampling order. As in the reference, the held-out models are the *last*
``num_held_out`` of the set, and the rest are the hold-in (training) models.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax import config as config_lib
from uhn_jax.core import descriptors

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MLPFamily:
    """MLPs whose depth and per-layer widths are sampled independently.

    Attributes:
      min_depth: fewest hidden layers (``len(widths)``).
      max_depth: most hidden layers.
      widths: the width choices of every hidden layer.
    """

    min_depth: int = 1
    max_depth: int = 3
    widths: tuple[int, ...] = (32, 48, 64, 80, 96, 112, 128)

    def __post_init__(self):
        if not 1 <= self.min_depth <= self.max_depth:
            raise ValueError(
                f"MLPFamily needs 1 <= min_depth <= max_depth, got {self.min_depth}, "
                f"{self.max_depth}"
            )
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"MLPFamily widths must be positive ints, got {self.widths}")
        object.__setattr__(self, "widths", tuple(sorted({int(w) for w in self.widths})))

    @property
    def size(self) -> int:
        """Number of distinct architectures in the family."""
        w = len(self.widths)
        return sum(w**d for d in range(self.min_depth, self.max_depth + 1))

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        depth = int(rng.integers(self.min_depth, self.max_depth + 1))
        return {"family": "mlp", "widths": [int(rng.choice(self.widths)) for _ in range(depth)]}

    def largest(self) -> dict[str, Any]:
        """The architecture every member embeds into (max depth, max width)."""
        return {"family": "mlp", "widths": [max(self.widths)] * self.max_depth}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "mlp", **dataclasses.asdict(self)}


FAMILIES = {"mlp": MLPFamily}


def family_from_dict(d: Mapping[str, Any]) -> MLPFamily:
    """Inverse of ``Family.to_dict``."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in FAMILIES:
        raise ValueError(f"unknown model family kind {kind!r}; known: {sorted(FAMILIES)}")
    fields = {f.name: f.type for f in dataclasses.fields(FAMILIES[kind])}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"unknown {kind} family field(s) {sorted(unknown)}")
    return FAMILIES[kind](**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclasses.dataclass(frozen=True)
class ModelSet:
    """Architectures sampled from a family, the last ``num_held_out`` of them held out.

    Attributes:
      family: the family they were drawn from.
      seed: the sampling seed.
      models: the architectures (``model`` config overrides), in sampling order.
      num_held_out: how many models at the end of ``models`` are held out.
    """

    family: MLPFamily
    seed: int
    models: tuple[Mapping[str, Any], ...]
    num_held_out: int

    def __post_init__(self):
        if not 0 <= self.num_held_out < len(self.models):
            raise ValueError(
                f"num_held_out must be in [0, {len(self.models)}) for {len(self.models)} models, "
                f"got {self.num_held_out}"
            )

    @property
    def hold_in(self) -> tuple[Mapping[str, Any], ...]:
        return self.models[: len(self.models) - self.num_held_out]

    @property
    def held_out(self) -> tuple[Mapping[str, Any], ...]:
        return self.models[len(self.models) - self.num_held_out :]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "family": self.family.to_dict(),
            "seed": self.seed,
            "num_held_out": self.num_held_out,
            "models": [dict(m) for m in self.models],
        }


def sample(family: MLPFamily, n: int, num_held_out: int, seed: int) -> ModelSet:
    """Draws ``n`` distinct architectures from ``family`` with ``numpy``'s generator ``seed``.

    Duplicates are redrawn (at most ``50 * n`` draws, as the reference caps its trials).

    Raises:
      ValueError: if the family has fewer than ``n`` architectures, or ``n`` distinct ones were
        not found within the draws.
    """
    if n < 1:
        raise ValueError(f"a model set needs n >= 1 models, got {n}")
    if n > family.size:
        raise ValueError(f"the family has only {family.size} distinct architectures, asked for {n}")
    rng = np.random.default_rng(seed)
    seen: dict[str, Mapping[str, Any]] = {}
    for _ in range(50 * n):
        arch = family.sample(rng)
        seen.setdefault(json.dumps(arch, sort_keys=True), arch)
        if len(seen) == n:
            return ModelSet(family, seed, tuple(seen.values()), num_held_out)
    raise ValueError(f"found only {len(seen)} distinct architectures in {50 * n} draws")


def save(model_set: ModelSet, path: str | os.PathLike[str]) -> Path:
    """Writes ``model_set`` as JSON (creating parent directories)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model_set.to_dict(), indent=1) + "\n")
    return path


def load(path: str | os.PathLike[str]) -> ModelSet:
    """Reads a model set written by :func:`save`.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: for another schema version or malformed content, naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model set {path} not found; create it with model_sets.save")
    try:
        d = json.loads(path.read_text())
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}"
            )
        return ModelSet(
            family_from_dict(d["family"]),
            int(d["seed"]),
            tuple(d["models"]),
            int(d["num_held_out"]),
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a valid model set: {e}") from e


def model_config(base: config_lib.ModelConfig, arch: Mapping[str, Any]) -> config_lib.ModelConfig:
    """``base`` with the architecture's fields replaced (validated)."""
    fields = {f.name for f in dataclasses.fields(config_lib.ModelConfig)}
    unknown = set(arch) - fields
    if unknown:
        raise ValueError(f"architecture {dict(arch)} has unknown model field(s) {sorted(unknown)}")
    values = {
        k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
        for k, v in arch.items()
    }
    cfg = dataclasses.replace(base, **values)
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- padding


@dataclasses.dataclass(frozen=True, eq=False)
class Embedded:
    """One architecture written into the layout of the family's largest member.

    Every array has the same shape for every member of a family, so one compiled step serves
    the whole set (the step takes these as inputs, not as static arguments).

    Attributes:
      desc: descriptors over the largest member's tensors, each carrying the member's own
        constant fields (layer index and type, param type) and init target; its index grids
        enumerate the large tensor's positions, which equal the member's own indices inside the
        member's corner.
      weight_mask: ``(N_max,)`` float32, 1 where a generated scalar is one of the member's
        weights (the corner of a mapped tensor), 0 elsewhere; masked scalars are set to 0.
      tensor_present: ``(T_max,)`` float32, 1 for tensors the member has (the init stage skips
        the others, as the reference skips empty tensors).
      layer_mask: ``(L_max,)`` float32, 1 for the member's layers (structure rows are
        zero-padded past them).
      structure_input: ``(L_max, 29)`` the member's structure input, zero rows past its layers.
    """

    desc: descriptors.ModelDescriptors
    weight_mask: np.ndarray
    tensor_present: np.ndarray
    layer_mask: np.ndarray
    structure_input: np.ndarray


def embed(
    member: descriptors.ModelDescriptors,
    largest: descriptors.ModelDescriptors,
    layer_map: Mapping[str, str],
) -> Embedded:
    """Writes ``member``'s descriptors into ``largest``'s layout.

    Args:
      member: descriptors of one architecture.
      largest: descriptors of the family's largest member.
      layer_map: ``{member layer name: largest layer name}``; each member tensor lands in the
        top-left corner of the same-named tensor of the mapped layer.

    Raises:
      ValueError: if a member tensor does not fit in its target, or a layer is unmapped.
    """
    target_of = {}
    for g in member.grids:
        layer, tensor = g.keys
        if layer not in layer_map:
            raise ValueError(f"member layer {layer!r} has no target layer in {dict(layer_map)}")
        target_of[(layer_map[layer], tensor)] = g
    found = {g.keys for g in largest.grids}
    missing = sorted(set(target_of) - found)
    if missing:
        raise ValueError(f"target tensors {missing} are not in the largest member's layout")
    grids, masks, present = [], [], []
    for big in largest.grids:
        g = target_of.get(big.keys)
        mask = np.zeros(big.shape, np.float32)
        if g is None:
            grids.append(dataclasses.replace(big, target=(0.0, 0.0)))
            present.append(0.0)
        else:
            if len(g.shape) != len(big.shape) or any(
                a > b for a, b in zip(g.shape, big.shape, strict=True)
            ):
                raise ValueError(
                    f"tensor {g.keys} {g.shape} does not fit in {big.keys} {big.shape}"
                )
            if g.axes != big.axes:
                raise ValueError(f"tensor {g.keys} indexes {g.axes}, its target {big.axes}")
            mask[tuple(slice(0, n) for n in g.shape)] = 1.0
            grids.append(dataclasses.replace(big, const=g.const, target=g.target))
            present.append(1.0)
        masks.append(mask.reshape(-1))
    n_layers, n_max = member.structure.shape[0], largest.structure.shape[0]
    if n_layers > n_max:
        raise ValueError(f"the member has {n_layers} layers, the largest member {n_max}")
    structure = np.zeros_like(largest.structure_input)
    structure[:n_layers] = member.structure_input
    desc = descriptors.ModelDescriptors(
        largest.layout, tuple(grids), member.structure, member.global_
    )
    return Embedded(
        desc,
        np.concatenate(masks),
        np.asarray(present, np.float32),
        (np.arange(n_max) < n_layers).astype(np.float32),
        structure,
    )


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m uhn_jax.training.model_sets --out FILE [...]``: an MLP model set to JSON."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--n", type=int, default=100, help="number of distinct architectures")
    p.add_argument("--held-out", type=int, default=20, help="how many (the last ones) to hold out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-depth", type=int, default=1)
    p.add_argument("--max-depth", type=int, default=3)
    p.add_argument("--widths", default="16,24,32,40,48,56,64", help="comma-separated choices")
    args = p.parse_args(argv)
    family = MLPFamily(
        args.min_depth, args.max_depth, tuple(int(w) for w in args.widths.split(","))
    )
    path = save(sample(family, args.n, args.held_out, args.seed), args.out)
    print(f"wrote {args.n} architectures ({args.held_out} held out) to {path}")
    return path


if __name__ == "__main__":
    main()
