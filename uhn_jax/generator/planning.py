"""Planning a model's generation on the host: the separable/direct split, tables, chunk sizes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import numpy as np

from uhn_jax.core import checks, descriptors, encodings
from uhn_jax.generator import module, settings

#: Default of :func:`plan`'s ``min_separable``: tensors below this many scalars (biases, norms)
#: stay on the direct path, where they share one pass; above it the separable path's
#: ``(R + C) F`` cos/sin evaluations instead of ``R C F`` pay for a call of its own.
MIN_SEPARABLE = 1024
#: The direct path's encoded descriptors are cached by :func:`with_tables` up to this size: a
#: small cache (64 MiB) removes their cos/sin from every step, a large one would hold memory
#: that a chunked pass over the descriptors avoids.
DIRECT_FEATURE_CACHE_BYTES = 64 * 2**20
#: Bytes of a float32, the dtype of every buffer :func:`auto_chunking` and the cache count.
FLOAT32_BYTES = 4
MIB = 2**20
#: :func:`auto_chunking`'s estimate of the float32 ``(H,)`` buffers the residual blocks keep per
#: direct row, forward + backward (block inputs, LayerNorm and ReLU outputs, cotangents).
DIRECT_BLOCK_BUFFERS = 16
#: :func:`auto_chunking` turns ``remat`` on when the kept first-layer outputs alone would take
#: more than this share of the budget: the chunks then get the rest.
REMAT_SHARE = 0.5
#: The largest chunk :func:`auto_chunking` tries (halving from it): above any model's size.
MAX_CHUNK = 2**30


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of how each tensor of a model is generated.

    Tensors with at least two axes and ``min_separable`` scalars take the separable path
    (:meth:`Generator.separable_hidden`): the last axis (the output index for Linear and HWIO conv
    kernels) enumerates rows, the other axes enumerate columns. Separable tensors whose columns
    are the same (same leading shape and fields, e.g. the repeated convs of a ResNet stage) form
    one group and are generated in one call over their stacked rows. All other tensors share one
    direct, chunked pass over their materialised descriptors.
    """

    shapes: tuple[tuple[int, ...], ...]
    separable: tuple[bool, ...]
    groups: tuple[tuple[int, ...], ...] = ()  # tensor indices of each separable group
    # Per group: descriptors affine in the indices (nothing clipped), so the first layer can be
    # a non-uniform FFT (Generator.nufft_hidden).
    linear: tuple[bool, ...] = ()


def check(gen: module.Generator, desc: descriptors.ModelDescriptors) -> None:
    """Raises ValueError if ``desc`` leaves ``gen``'s declared ranges (unless it clips)."""
    if gen.out_of_range == "clip":
        return
    own = desc.index_ranges()
    descriptors.check_in_range(own.lo, own.hi, gen.index_ranges, descriptors.INDEX_FIELDS)
    if gen.structure:
        own = desc.structure_ranges()
        names = descriptors.GLOBAL_FIELDS + descriptors.STRUCTURE_FIELDS
        descriptors.check_in_range(own.lo, own.hi, gen.structure_ranges, names)


def check_inputs(
    gen: module.Generator,
    variables: dict,
    index_N10,
    structure_L29=None,
    out_of_range: str = "error",
) -> None:
    """The checks :func:`generate` runs on its arguments before any compilation.

    Shapes and dtypes always (static, so free under ``jit``); that ``variables`` fit ``gen``
    (:func:`check_variables`); and, for arrays whose values are on the host (not traced,
    :func:`uhn_jax.core.checks.concrete`), that descriptors are finite and, unless
    ``out_of_range="clip"``, inside ``gen``'s declared ranges.

    Raises:
      TypeError: for a bool, unsigned or complex descriptor array.
      ValueError: naming the argument (or descriptor field), the value and what is allowed.
    """
    checks.choice("out_of_range", out_of_range, settings.OUT_OF_RANGE)
    check_variables(gen, variables)
    arrays = [("index_N10", index_N10, "N", gen.index_ranges, descriptors.INDEX_FIELDS)]
    if gen.structure and structure_L29 is not None:
        fields = descriptors.GLOBAL_FIELDS + descriptors.STRUCTURE_FIELDS
        arrays.append(("structure_L29", structure_L29, "L", gen.structure_ranges, fields))
    for name, x, rows, ranges, fields in arrays:
        checks.shape(name, x, (None, len(fields)), f"({rows}, {len(fields)})")
        checks.real_dtype(name, x)
        checks.finite(name, x)
        if out_of_range == "error" and checks.concrete(x) and np.shape(x)[0]:
            x = np.asarray(x, np.float64)
            descriptors.check_in_range(x.min(0), x.max(0), ranges, fields, f"{name}: ")


def check_variables(gen: module.Generator, variables: dict) -> None:
    """Raises ValueError unless ``variables`` have the leaves and shapes ``gen`` creates (e.g.
    the variables of a generator with other ``n_freqs``, ``hidden`` or ``num_blocks``)."""
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a dict of collections, got {type(variables).__name__}")
    expected = _variable_shapes(gen)
    given = {k: variables.get(k) for k in expected}  # other collections are not the module's
    checks.same_shapes("variables", given, expected)


@functools.lru_cache(maxsize=64)
def _variable_shapes(gen: module.Generator) -> dict:
    return jax.eval_shape(lambda key: module.init(gen, key), jax.random.key(0))


def plan(
    gen: module.Generator, desc: descriptors.ModelDescriptors, min_separable: int = MIN_SEPARABLE
) -> tuple[Plan, dict]:
    """Splits a model's tensors between the separable and the direct path.

    Args:
      gen: the generator (its ranges normalise the separable descriptors on the host).
      desc: the model's descriptors.
      min_separable: smallest tensor size sent down the separable path; ``0`` disables it.

    Returns:
      ``(plan, arrays)``: the static :class:`Plan` and a pytree of numpy arrays
      ``{"direct": (N_direct, 10) raw descriptors, "rows": [(R, 10)], "cols": [(C, 10)]}``
      with one rows/cols pair per group (rows of its tensors stacked); row and column
      descriptors are normalised and sum to each scalar's normalised descriptor.
    """
    use = gen.encoding == "fourier" and min_separable > 0
    stats = descriptors.minmax_stats(gen.index_ranges)
    separable, direct = [], []
    groups: dict[tuple, list[int]] = {}
    linear: dict[tuple, bool] = {}
    group_rows: dict[tuple, list[np.ndarray]] = {}
    group_cols: dict[tuple, np.ndarray] = {}
    for t, g in enumerate(desc.grids):
        sep = use and len(g.shape) >= 2 and g.size >= min_separable
        separable.append(sep)
        if not sep:
            direct.append(g.materialize())
            continue
        row, col, affine = _rows_and_cols(g, stats, gen.out_of_range == "clip")
        key = (g.shape[:-1], g.axes[:-1])
        groups.setdefault(key, []).append(t)
        linear[key] = linear.get(key, True) and affine
        group_rows.setdefault(key, []).append(row)
        group_cols[key] = col
    arrays = {
        "direct": (
            np.concatenate(direct) if direct else np.zeros((0, module.INDEX_DIM), np.float32)
        ),
        "rows": [np.concatenate(group_rows[k]) for k in groups],
        "cols": [group_cols[k] for k in groups],
    }
    plan_ = Plan(
        tuple(g.shape for g in desc.grids),
        tuple(separable),
        tuple(tuple(ts) for ts in groups.values()),
        tuple(linear[k] for k in groups),
    )
    return plan_, arrays


def _rows_and_cols(
    g: descriptors.TensorGrid, stats: tuple[np.ndarray, ...], clip: bool
) -> tuple[np.ndarray, np.ndarray, bool]:
    """One separable tensor's normalised row ``(R, 10)`` and column ``(C, 10)`` descriptors,
    and whether they are affine in the indices (no index value clipped to its range)."""
    lo, hi, mean, std = stats
    const = np.asarray(g.const, np.float32)
    if clip:
        const = const.clip(lo, hi)
    # Index values past their declared range are clipped: not affine in the index any more.
    top = np.asarray(g.shape) - 1
    affine = bool(np.all((lo[list(g.axes)] <= 0) & (top <= hi[list(g.axes)])))
    base = np.where(np.isin(np.arange(len(const)), g.axes), 0.0, (const - mean) / std)
    r_field = g.axes[-1]
    r_vals = np.arange(g.shape[-1], dtype=np.float32)
    row = np.tile(base, (g.shape[-1], 1))
    row[:, r_field] = (np.clip(r_vals, lo[r_field], hi[r_field]) - mean[r_field]) / std[r_field]
    grid = np.indices(g.shape[:-1]).reshape(len(g.shape) - 1, -1).astype(np.float32)
    col = np.zeros((grid.shape[1], len(const)), np.float32)
    for k, field in enumerate(g.axes[:-1]):
        col[:, field] = (np.clip(grid[k], lo[field], hi[field]) - mean[field]) / std[field]
    return row.astype(np.float32), col, affine


def with_tables(gen: module.Generator, variables: dict, arrays: dict) -> dict:
    """``arrays`` of :func:`plan` plus the Fourier tables that stay fixed during training.

    Adds ``"row_tables"`` (``(R, 2F)`` per group) and ``"col_tables"`` (``(C, 2F)``), which
    :func:`generate_planned` uses instead of evaluating cos/sin of the row and column
    descriptors again, and, when they take at most :data:`DIRECT_FEATURE_CACHE_BYTES`, the
    direct path's encoded descriptors ``"direct_features"`` (``(N_direct, enc_dim)``). For a
    small target such as the 364-weight formula KAN, those cos/sin were most of a step. All of
    it depends only on the frozen Fourier matrix and fixed descriptors, so a training run
    computes it once; ``generate_planned`` calls this itself when the tables are missing.
    Jit-safe; with descriptor rows split over a mesh, the row tables and features follow.
    """
    tables = [
        gen.apply(variables, rows, cols, method=module.Generator.separable_tables)
        for rows, cols in zip(arrays["rows"], arrays["cols"], strict=True)
    ]
    out = dict(arrays, row_tables=[t[0] for t in tables], col_tables=[t[1] for t in tables])
    direct = arrays["direct"]
    enc_dim = encodings.output_dim(gen.encoding, direct.shape[1], gen.n_freqs)
    if 0 < direct.shape[0] * enc_dim * FLOAT32_BYTES <= DIRECT_FEATURE_CACHE_BYTES:
        out["direct_features"] = gen.apply(
            variables, direct, method=module.Generator.index_features
        )
    return out


def auto_chunking(
    gen: module.Generator, arrays: dict, budget_mib: float, devices: int = 1
) -> tuple[int | None, bool]:
    """Chooses ``(chunk_size, remat)`` for :func:`generate_planned` from a memory budget.

    Estimates (float32, per device) the working set of generation forward + backward:

    * separable chunk of ``r`` rows and C columns: the per-row matrices and their cotangent,
      ``2 * 2F * r * H``, plus first-layer outputs, cotangents and block inputs, ``3 * C * r * H``;
    * direct chunk of ``s`` rows: projections, cos/sin and features, ``3 * 2F * s``, plus
      ``16 * H * s`` for the blocks (:data:`DIRECT_BLOCK_BUFFERS`);
    * kept across chunks: the row and column Fourier tables, and without ``remat`` the
      ``(N_separable, H)`` first-layer outputs.

    Returns ``(None, False)`` (one pass, nothing recomputed: fastest) when that fits in
    ``budget_mib``; otherwise the largest power-of-two chunk that fits, with ``remat`` on
    when the kept outputs alone would take more than :data:`REMAT_SHARE` of the budget.

    Args:
      gen: the generator (its ``hidden`` and ``n_freqs`` size the buffers).
      arrays: the host arrays of :func:`plan`.
      budget_mib: the memory allowed for generation, in MiB.
      devices: rows are split over this many devices (each holds ``1 / devices`` of a chunk).
    """
    if budget_mib <= 0:
        raise ValueError(f"the generation memory budget must be positive, got {budget_mib} MiB")
    f, h = gen.n_freqs, gen.hidden
    groups = [(r.shape[0], c.shape[0]) for r, c in zip(arrays["rows"], arrays["cols"], strict=True)]
    n_direct = arrays["direct"].shape[0]

    def transient(chunk: int | None) -> float:
        total = 0.0
        for rows, cols in groups:
            r = rows if chunk is None else min(rows, max(1, chunk // cols))
            total += 2 * 2 * f * r * h + 3 * cols * r * h
        s = n_direct if chunk is None else min(n_direct, chunk)
        direct = s * (3 * 2 * f + DIRECT_BLOCK_BUFFERS * h)
        return float(FLOAT32_BYTES) * (total + direct) / devices

    tables = float(FLOAT32_BYTES) * sum(2 * f * r / devices + 2 * f * c for r, c in groups)
    kept = float(FLOAT32_BYTES) * sum(r * c * h / devices for r, c in groups)
    budget = budget_mib * MIB - tables
    if kept + transient(None) <= budget:
        return None, False
    remat = kept > budget * REMAT_SHARE
    avail = budget - (0.0 if remat else kept)
    chunk = MAX_CHUNK
    while chunk > 1 and transient(chunk) > avail:
        chunk //= 2
    return chunk, remat
