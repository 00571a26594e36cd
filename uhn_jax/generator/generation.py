"""Generating a model's flat weight vector: the one-pass and the chunked paths of a plan."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from uhn_jax.core import checks
from uhn_jax.core import sharding as sharding_lib
from uhn_jax.generator import module, planning, separable, settings

#: Rows of first-layer output sent through the residual blocks at once on the separable path
#: (under ``jax.checkpoint``). The blocks are elementwise-heavy at width h; chunks this size stay
#: in cache, which made the MNIST MLP's blocks ~1.7x faster forward + backward on a 2-core CPU
#: than one pass over all rows.
TAIL_ROWS = 2048
#: :func:`_chunked_rows` rounds chunks up to a multiple of this many rows (times the devices):
#: XLA's CPU kernels handle multiples of 8 rows markedly faster.
ROW_ALIGN = 8
#: ... but only chunks of at least this many rows, so that tiny chunks are not padded by much.
MIN_ALIGNED_CHUNK = 64


def generate(
    gen: module.Generator,
    variables: dict,
    index_N10: jax.Array,
    structure_L29: jax.Array | None = None,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    *,
    out_of_range: str | None = None,
) -> jax.Array:
    """Generates the flat weight vector ``w[N]`` for raw index descriptors ``(N, 10)``.

    With ``chunk_size`` the N rows are processed ``chunk_size`` at a time under ``lax.map`` with
    ``jax.checkpoint``: the backward pass keeps only each chunk's descriptors and recomputes the
    ``(chunk, 2 * n_freqs)`` features, so peak memory is set by the chunk, not by N.

    The arguments are checked first (:func:`planning.check_inputs`): shapes, dtypes and that
    ``variables`` fit ``gen`` always; finiteness and the declared ranges of descriptors whose
    values are on the host (inside ``jit`` or ``grad`` of them, these value checks are skipped).

    Args:
      gen: the generator module.
      variables: its variables (``params`` and ``constants``).
      index_N10: raw (un-normalised) index descriptors.
      structure_L29: the model's structure input, needed when ``gen.structure``.
      chunk_size: rows per chunk; ``None`` or ``>= N`` generates in one piece; ``0`` chooses
        it as a config's ``generator.chunk_size=0`` does (see :func:`generate_planned`).
      mesh: a 1-D device mesh (:func:`uhn_jax.core.sharding.make_mesh`): every chunk's rows are
        split over its devices and ``w`` comes back replicated. ``None``: no constraints.
      out_of_range: a descriptor outside ``gen``'s declared ranges raises ValueError naming
        the field (``"error"``) or is clamped to the range (``"clip"``). ``None``:
        ``gen.out_of_range`` (``"error"`` by default).

    Returns:
      float32 ``(N,)``.
    """
    out_of_range = gen.out_of_range if out_of_range is None else out_of_range
    planning.check_inputs(gen, variables, index_N10, structure_L29, out_of_range)
    if out_of_range != gen.out_of_range:
        gen = gen.clone(out_of_range=out_of_range)  # same variables; clamps in-graph
    plan_ = planning.Plan(shapes=((index_N10.shape[0],),), separable=(False,))
    arrays = {"direct": index_N10, "rows": [], "cols": []}
    return generate_planned(
        gen, variables, plan_, arrays, structure_L29, chunk_size=chunk_size, mesh=mesh
    )


def generate_planned(
    gen: module.Generator,
    variables: dict,
    plan_: planning.Plan,
    arrays: dict,
    structure_L29: jax.Array | None = None,
    *,
    chunk_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    remat: bool = True,
    layer_mask: jax.Array | None = None,
) -> jax.Array:
    """Generates ``w[N]`` following a :class:`Plan`; equals :func:`generate` up to rounding.

    ``layer_mask`` marks the real rows of a zero-padded ``structure_L29`` (multi-model runs).
    ``chunk_size=0`` means automatic, as in a config: :func:`auto_chunking` picks ``chunk_size``
    and ``remat`` for the default budget ``DEFAULTS.memory_mib``.

    ``chunk_size`` bounds the scalars generated at once on both paths: direct rows go
    ``chunk_size`` at a time under ``lax.map`` + ``jax.checkpoint``; a separable tensor with C
    columns ``max(1, chunk_size // C)`` rows at a time. On the separable path the residual
    blocks always run :data:`TAIL_ROWS` first-layer outputs at a time under ``jax.checkpoint``,
    and ``remat`` decides whether a chunk's first layer is recomputed in the backward pass too
    (memory set by the chunk) or its ``(chunk, H)`` output kept (memory ``4 N H`` bytes, no
    recomputation of the dominant matmul); :func:`auto_chunking` picks both from a budget. With
    a ``mesh`` the rows of every chunk are split over its devices (the chunk is rounded up to a
    multiple of the device count) and the returned ``w`` is replicated. Separable groups that
    :func:`use_nufft` picks take :meth:`Generator.nufft_hidden` instead of the matmul, with the
    same chunks (:func:`_nufft_group`). Without ``chunk_size`` every tensor outside those groups
    shares one residual-block loop (:func:`_one_pass`).
    """
    if gen.structure and structure_L29 is None:
        raise ValueError("this generator has a structure path; pass structure_L29")
    if chunk_size is not None:
        checks.non_negative_int("chunk_size", chunk_size, " or None (0 = automatic)")
    if chunk_size == 0:
        devices = 1 if mesh is None else mesh.size
        budget = settings.DEFAULTS.memory_mib
        chunk_size, remat = planning.auto_chunking(gen, arrays, budget, devices)
    if structure_L29 is None:
        structure_L29 = jnp.zeros((1, module.STRUCTURE_DIM))
    s_h = gen.apply(variables, structure_L29, layer_mask, method=module.Generator.structure_vector)
    if "row_tables" not in arrays:
        arrays = planning.with_tables(gen, variables, arrays)
    nufft = separable.use_nufft(gen, plan_, chunk_size, mesh)
    if chunk_size is None:
        w = _one_pass(gen, variables, plan_, arrays, s_h, nufft, mesh)
    else:
        w = _chunked(gen, variables, plan_, arrays, s_h, nufft, chunk_size, mesh, remat)
    return sharding_lib.constrain(w, sharding_lib.replicated(mesh))


def _chunked(gen, variables, plan_, arrays, s_h, nufft, chunk_size, mesh, remat):
    """:func:`generate_planned` with chunks: the direct path, then each separable group."""
    direct_w = None
    if "direct_features" in arrays:
        direct_w = _chunked_rows(
            lambda f: gen.apply(variables, f, s_h, method=module.Generator.from_features),
            arrays["direct_features"],
            chunk_size,
            mesh,
        )
    elif arrays["direct"].shape[0]:
        direct_w = _chunked_rows(
            lambda x: gen.apply(variables, x, s_h, method=module.Generator.from_index),
            arrays["direct"],
            chunk_size,
            mesh,
        )

    def tail(h):
        return gen.apply(variables, h, s_h, method=module.Generator.from_hidden)

    pieces: dict[int, jax.Array] = {}
    for g, (group, row_tab, col_tab) in enumerate(
        zip(plan_.groups, arrays["row_tables"], arrays["col_tables"], strict=True)
    ):

        def run(row_tab, col_tab=col_tab):
            h = gen.apply(variables, row_tab, col_tab, method=module.Generator.separable_hidden)
            w = _chunked_rows(tail, h, TAIL_ROWS, mesh)
            return w.reshape(col_tab.shape[0], row_tab.shape[0]).T

        if nufft[g]:
            w_RC = _nufft_group(gen, variables, plan_, arrays, g, tail, chunk_size, remat)
        else:
            per_chunk = max(1, chunk_size // col_tab.shape[0])
            w_RC = _chunked_rows(run, row_tab, per_chunk, mesh, remat)
        start = 0
        for t in group:
            r = plan_.shapes[t][-1]
            # Rows enumerate the last tensor axis: (R, C) -> C order over (*other axes, R).
            pieces[t] = w_RC[start : start + r].T.reshape(-1)
            start += r
    pieces.update(_direct_pieces(plan_, direct_w))
    return jnp.concatenate([pieces[t] for t in range(len(plan_.shapes))])


def _one_pass(gen, variables, plan_, arrays, s_h, nufft, mesh):
    """:func:`generate_planned` without chunks. The first-layer outputs of every tensor on the
    matmul and direct paths, put in weight order, go through one :data:`TAIL_ROWS`-chunked pass
    of the residual blocks and head instead of one pass per group: a smaller compiled program
    (the MNIST CNN config's one-step run: 36.5 s -> 26.5 s, mostly compilation). Groups on the
    non-uniform FFT keep their own passes (:func:`_nufft_group`); merged, the MNIST MLP's step
    was slower."""

    def tail(h):
        return gen.apply(variables, h, s_h, method=module.Generator.from_hidden)

    if "direct_features" in arrays:
        feats = arrays["direct_features"]
    else:
        feats = gen.apply(variables, arrays["direct"], method=module.Generator.index_features)
    direct_h = gen.apply(variables, feats, method=module.Generator.first_layer)
    hidden: dict[int, jax.Array] = {}  # first-layer outputs (C r, H) in weight order
    weights: dict[int, jax.Array] = {}  # flat weights per tensor, nufft groups first
    for g, (group, row_tab, col_tab) in enumerate(
        zip(plan_.groups, arrays["row_tables"], arrays["col_tables"], strict=True)
    ):
        if nufft[g]:
            w_RC = _nufft_group(gen, variables, plan_, arrays, g, tail, None, False)
        else:
            h = gen.apply(variables, row_tab, col_tab, method=module.Generator.separable_hidden)
            h_CRH = h.reshape(col_tab.shape[0], row_tab.shape[0], -1)
        start = 0
        for t in group:
            r = plan_.shapes[t][-1]
            if nufft[g]:
                weights[t] = w_RC[start : start + r].T.reshape(-1)
            else:
                hidden[t] = h_CRH[:, start : start + r].reshape(-1, h_CRH.shape[-1])
            start += r
    hidden.update(_direct_pieces(plan_, direct_h))
    order = sorted(hidden)
    if order:
        w = _chunked_rows(tail, jnp.concatenate([hidden[t] for t in order]), TAIL_ROWS, mesh)
        off = 0
        for t in order:
            weights[t] = w[off : off + hidden[t].shape[0]]
            off += hidden[t].shape[0]
    return jnp.concatenate([weights[t] for t in range(len(plan_.shapes))])


def _direct_pieces(plan_: planning.Plan, rows: jax.Array | None) -> dict[int, jax.Array]:
    """Per tensor on the direct path, its rows of ``rows`` (the direct path's outputs in plan
    order: weights, or first-layer outputs)."""
    pieces, off = {}, 0
    for t, (shape, sep) in enumerate(zip(plan_.shapes, plan_.separable, strict=True)):
        if not sep:
            size = math.prod(shape)
            pieces[t] = rows[off : off + size]
            off += size
    return pieces


def _nufft_group(gen, variables, plan_, arrays, g, tail, chunk_size, remat):
    """Weights ``(R, C)`` of separable group ``g`` through :meth:`Generator.nufft_hidden`.

    Each tensor's rows go ``max(1, chunk_size // C)`` at a time under ``lax.map`` (with
    ``jax.checkpoint`` when ``remat``): a chunk starting at row ``o0`` is the transform with its
    first row's descriptor ``r_0 + o0 dr``. Rows past a tensor's end are computed and dropped.
    """
    group, rows, cols = plan_.groups[g], arrays["rows"][g], arrays["cols"][g]
    col_shape = plan_.shapes[group[0]][:-1]
    n_cols = cols.shape[0]
    out, start = [], 0
    for t in group:
        n_out = plan_.shapes[t][-1]
        per = n_out if chunk_size is None else min(n_out, max(1, chunk_size // n_cols))
        r0 = rows[start]
        dr = rows[start + 1] - r0 if n_out > 1 else jnp.zeros_like(r0)

        def run(o0, r0=r0, dr=dr, per=per):
            method = module.Generator.nufft_hidden
            h = gen.apply(variables, r0 + o0 * dr, dr, cols, per, col_shape, method=method)
            return _chunked_rows(tail, h, TAIL_ROWS).reshape(n_cols, per).T

        num = -(-n_out // per)
        if num == 1:
            w = run(jnp.float32(0))
        else:
            offsets = jnp.arange(num, dtype=jnp.float32) * per
            w = jax.lax.map(jax.checkpoint(run) if remat else run, offsets)
            w = w.reshape(num * per, n_cols)[:n_out]
        out.append(w)
        start += n_out
    return jnp.concatenate(out)


def _chunked_rows(fn, rows, chunk_size: int | None, mesh=None, remat: bool = True):
    """``fn(rows)`` evaluated at most ``chunk_size`` rows at a time under ``lax.map``.

    The rows are split into ``ceil(n / chunk_size)`` near-equal chunks (the last one padded
    with zero rows, whose outputs are dropped), so padding stays small. Zeros rather than copies
    of the last row: the backward pass of zero padding is a slice, that of edge padding built
    two zero-filled ``(n, H)`` buffers (20-30 ms of the MNIST CNN step). With ``remat`` each
    chunk runs under ``jax.checkpoint``: the backward pass keeps only the chunks' inputs. With a
    ``mesh``, each chunk's rows are split over the devices: the chunk axis of the
    ``(num_chunks, chunk, d)`` stack is sharded, so every ``lax.map`` iteration runs on all
    devices at once.
    """
    n = rows.shape[0]
    if chunk_size is not None and chunk_size <= 0:  # callers pass None, or resolve 0 first
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    devices = 1 if mesh is None else mesh.size
    if chunk_size is None or chunk_size >= n:
        if devices == 1:
            return fn(rows)
        chunk_size = n
    num_chunks = -(-n // chunk_size)
    # Equal chunks, rounded up to a multiple of the devices (and of ROW_ALIGN rows).
    align = devices * (ROW_ALIGN if chunk_size >= MIN_ALIGNED_CHUNK else 1)
    per_chunk = -(-n // num_chunks)
    chunk_size = -(-per_chunk // align) * align
    num_chunks = -(-n // chunk_size)
    padded = jnp.pad(rows, ((0, num_chunks * chunk_size - n), (0, 0)))
    chunks = padded.reshape(num_chunks, chunk_size, rows.shape[1])
    chunks = sharding_lib.constrain(chunks, sharding_lib.split(mesh, 3, axis=1))
    if num_chunks == 1:
        out = fn(chunks[0])[None]
    else:
        out = jax.lax.map(jax.checkpoint(fn) if remat else fn, chunks)
    return out.reshape(num_chunks * chunk_size, *out.shape[2:])[:n]
