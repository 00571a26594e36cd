"""Property-based tests (hypothesis) of the core: layouts, normalisation, chunked and grouped
generation.

Every example of the generation properties compiles a program, so the generator is tiny and
the example counts are small; ``derandomize=True`` makes each run draw the same examples.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.flatten_util import ravel_pytree

from uhn_jax import generator
from uhn_jax.core import descriptors, layouts

FIELDS = descriptors.INDEX_FIELDS
SQRT3 = math.sqrt(3.0)
#: float32 matmuls and the matmul first layer: the same function on every host (no bf16 GEMMs,
#: no non-uniform FFT). sigma=1 keeps the Fourier phases small, so two programs that round
#: differently still agree to ~1e-7 of the output scale.
TINY = dict(
    hidden=8,
    n_freqs=8,
    num_blocks=1,
    sigma=1.0,
    matmul_dtype="float32",
    separable_method="matmul",
)
#: Agreement asked of two evaluations of the same generator, relative to the largest weight.
RTOL = 1e-5


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,  # the first example of a shape pays for compilation
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


def _assert_close(actual, expected):
    scale = float(jnp.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * scale)


# ----------------------------------------------------------------------------- layouts

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(jnp.bfloat16))


@st.composite
def _leaf(draw):
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    dtype = draw(st.sampled_from(_DTYPES))
    width = 16 if dtype == np.float16 else 32
    # bfloat16 values are float32 draws rounded to bfloat16; NaN is left out so that values
    # can be compared bit for bit (which also checks -0.0 and subnormals).
    values = draw(
        hnp.arrays(
            np.float16 if width == 16 else np.float32,
            shape,
            elements=st.floats(allow_nan=False, width=width),
        )
    )
    return values.astype(dtype)


_KEYS = st.text(alphabet="abc_0", min_size=1, max_size=3)
_TREES = st.recursive(
    _leaf(),
    lambda children: (
        st.dictionaries(_KEYS, children, max_size=3)
        | st.lists(children, max_size=3)
        | st.lists(children, max_size=2).map(tuple)
    ),
    max_leaves=6,
)


def _bits(x):
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


@_settings(40)
@given(tree=_TREES)
def test_flatten_unflatten_round_trip(tree):
    """Any tree of float leaves (scalars, zero-size leaves, mixed dtypes) survives
    flatten -> unflatten bit for bit; a tree without leaves is refused."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if not leaves:
        with pytest.raises(ValueError, match="empty params pytree"):
            layouts.from_params(tree)
        return
    layout = layouts.from_params(tree)
    assert layout == layouts.from_params(jax.eval_shape(lambda: tree))  # from shapes alone
    sizes = [x.size for x in leaves]
    assert layout.size == sum(sizes)
    assert [lf.offset for lf in layout.leaves] == np.cumsum([0, *sizes[:-1]]).tolist()

    w = layouts.flatten(tree, layout)
    assert w.shape == (layout.size,) and w.dtype == jnp.float32
    # The flat order is ravel_pytree's (computed here on a float32 copy of the tree).
    f32 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), tree)
    np.testing.assert_array_equal(_bits(w), _bits(ravel_pytree(f32)[0]))
    for x, lf in zip(leaves, layout.leaves, strict=True):
        assert layout.leaf(lf.keys) is lf
        np.testing.assert_array_equal(
            _bits(w[lf.offset : lf.offset + lf.size]), _bits(x.astype(np.float32).ravel())
        )

    back = layouts.unflatten(w, layout)
    back_leaves, back_def = jax.tree_util.tree_flatten(back)
    assert back_def == treedef
    for x, y in zip(leaves, back_leaves, strict=True):
        assert y.shape == x.shape and y.dtype == x.dtype
        np.testing.assert_array_equal(_bits(y), _bits(x))

    with pytest.raises(ValueError, match=f"length {layout.size}"):
        layouts.unflatten(jnp.zeros(layout.size + 1), layout)


# ----------------------------------------------------------------------------- normalisation


@st.composite
def _ranges(draw):
    fields = len(FIELDS)
    lo = draw(st.lists(st.integers(-5, 5), min_size=fields, max_size=fields))
    width = draw(st.lists(st.integers(0, 50), min_size=fields, max_size=fields))  # 0: constant
    return descriptors.Ranges(
        tuple(float(a) for a in lo), tuple(float(a + w) for a, w in zip(lo, width, strict=True))
    )


def _valid_index(ranges, seed, n=16):
    """``(n, 10)`` integer-valued descriptors inside ``ranges``; rows 0 and 1 are lo and hi."""
    lo, hi = np.asarray(ranges.lo, np.int64), np.asarray(ranges.hi, np.int64)
    x = np.random.default_rng(seed).integers(lo, hi + 1, size=(n, len(lo)))
    x[0], x[1] = lo, hi
    return x.astype(np.float32)


def _half_width(ranges):
    """Largest |normalised value| of each field: the image of [lo, hi] is [-half, half]."""
    d = np.asarray(ranges.hi, np.float64) - np.asarray(ranges.lo, np.float64)
    return d / 2 / np.sqrt(d**2 / 12 + 1e-5)


#: Random ranges and descriptors (by seed) and one value of ``field`` moved ``offset`` past its
#: range (:func:`_out_of_range`).
_OUT_OF_RANGE_CASE = dict(
    ranges=_ranges(),
    seed=st.integers(0, 2**32 - 1),
    field=st.integers(0, len(FIELDS) - 1),
    offset=st.floats(0.5, 100.0),
    above=st.booleans(),
)


def _out_of_range(ranges, x, field, offset, above):
    """``x`` with one value of ``field`` moved ``offset`` past its declared range."""
    x = x.copy()
    x[2, field] = ranges.hi[field] + offset if above else ranges.lo[field] - offset
    return x


@_settings(80)
@given(**_OUT_OF_RANGE_CASE)
def test_normalize_stays_in_its_interval(ranges, seed, field, offset, above):
    """In range: values land in [-half, half] (inside [-sqrt 3, sqrt 3]), the ends map to the
    ends, order is kept. Out of range: an error naming the field, or the clamped value."""
    x = _valid_index(ranges, seed)
    xn = descriptors.normalize(x, ranges, FIELDS)
    half = _half_width(ranges)
    assert np.all(half < SQRT3)
    assert np.all(np.abs(xn) <= half * (1 + 1e-6) + 1e-6)
    np.testing.assert_allclose(xn[0], -half, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xn[1], half, rtol=1e-5, atol=1e-6)
    order = np.argsort(x, axis=0, kind="stable")
    assert np.all(np.diff(np.take_along_axis(xn, order, axis=0), axis=0) >= 0)

    bad = _out_of_range(ranges, x, field, offset, above)
    with pytest.raises(ValueError, match=f"field '{FIELDS[field]}'"):
        descriptors.normalize(bad, ranges, FIELDS)
    clipped = descriptors.normalize(bad, ranges, FIELDS, out_of_range="clip")
    assert np.all(np.abs(clipped) <= half * (1 + 1e-6) + 1e-6)
    np.testing.assert_array_equal(clipped[2, field], xn[1 if above else 0, field])


@functools.cache
def _variables(encoding):
    unit = descriptors.Ranges((0.0,) * len(FIELDS), (1.0,) * len(FIELDS))
    gen = generator.Generator(index_ranges=unit, encoding=encoding, **TINY)
    return generator.init(gen, jax.random.key(0))


@_settings(25)
@given(**_OUT_OF_RANGE_CASE)
def test_generator_encodings_stay_in_their_intervals(ranges, seed, field, offset, above):
    """The generator's in-graph normalisation agrees with the host's, clamps when asked, and
    ``generate`` refuses out-of-range descriptors by default, naming the field."""
    gens = {
        enc: generator.Generator(index_ranges=ranges, encoding=enc, out_of_range="clip", **TINY)
        for enc in ("raw", "fourier")
    }
    variables = {enc: _variables(enc) for enc in gens}  # shapes do not depend on the ranges
    bad = _out_of_range(ranges, _valid_index(ranges, seed), field, offset, above)

    def features(enc, x):
        return np.asarray(
            gens[enc].apply(variables[enc], x, method=generator.Generator.index_features)
        )

    raw = features("raw", bad)
    np.testing.assert_allclose(
        raw, descriptors.normalize(bad, ranges, FIELDS, "clip"), rtol=1e-6, atol=1e-6
    )
    assert np.all(np.abs(raw) <= _half_width(ranges) * (1 + 1e-6) + 1e-6)
    fourier = features("fourier", bad)
    cos, sin = np.split(fourier, 2, axis=1)
    assert fourier.shape == (len(bad), 2 * TINY["n_freqs"])
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-5)  # [cos, sin] of one phase

    strict = dataclasses.replace(gens["raw"], out_of_range="error")
    with pytest.raises(ValueError, match=f"index_N10: descriptor field '{FIELDS[field]}'"):
        generator.generate(strict, variables["raw"], bad)


# ----------------------------------------------------------------------------- random layers

#: Column parts of separable tensors: leading grid shape and the fields that enumerate it
#: (the second is folded: two axes of one field). Tensors drawn with the same entry can share
#: a group of the plan.
_COLUMNS = (
    ((3,), ("input_idx",)),
    ((2, 2, 2), ("kernel_h_idx", "kernel_w_idx", "input_idx")),
    ((2, 3), ("embedding_idx", "embedding_idx")),
    ((4,), ("sequence_idx",)),
)


@st.composite
def _models(draw):
    """Descriptors of 2-4 random layers with explicit roles: a kernel ``(*columns, rows)``
    whose rows are the output index (sometimes two folded axes), and sometimes a bias."""
    n = draw(st.integers(2, 4))
    picks = draw(st.lists(st.integers(0, len(_COLUMNS) - 1), min_size=n, max_size=n))
    picks[1] = picks[0]  # at least two tensors with the same columns
    params, layers = {}, []
    for i, pick in enumerate(picks):
        col_shape, col_axes = _COLUMNS[pick]
        rows = draw(st.integers(1, 5))
        row_shape = draw(st.sampled_from(((rows,), (2, rows))))
        axes = col_axes + ("output_idx",) * len(row_shape)
        tensors = {"kernel": jax.ShapeDtypeStruct(col_shape + row_shape, jnp.float32)}
        roles = {"kernel": descriptors.TensorRole(0, axes, (0.0, 0.1))}
        if draw(st.booleans()):
            tensors["bias"] = jax.ShapeDtypeStruct(row_shape, jnp.float32)
            roles["bias"] = descriptors.TensorRole(1, ("output_idx",) * len(row_shape), (0.0, 0.0))
        name = f"layer_{i}"
        params[name] = tensors
        kind = draw(st.integers(0, len(descriptors.LayerType) - 1))
        layers.append(descriptors.LayerSpec(name, kind, roles=tuple(roles.items())))
    return descriptors.build(layouts.from_params(params), layers, {})


def _tiny_generator(desc, clip_at):
    """A tiny generator declared for ``desc``; with ``clip_at`` the index fields' ranges end
    there and out-of-range values are clamped."""
    r = desc.index_ranges()
    if clip_at is None:
        return generator.Generator(index_ranges=r, **TINY)
    hi = tuple(
        min(h, clip_at) if name in descriptors.AXIS_FIELDS else h
        for name, h in zip(FIELDS, r.hi, strict=True)
    )
    return generator.Generator(
        index_ranges=descriptors.Ranges(r.lo, hi), out_of_range="clip", **TINY
    )


@_settings(40)
@given(desc=_models(), clip_at=st.sampled_from((None, 1.0)), min_separable=st.sampled_from((1, 8)))
def test_descriptors_and_plan_of_random_layers(desc, clip_at, min_separable):
    """Grid bounds are the materialised bounds; normalised descriptors stay in their interval;
    the plan's stacked rows plus its columns give every separable scalar's normalised
    descriptor, and its direct rows are the other tensors' descriptors in order."""
    index = desc.index
    ranges = desc.index_ranges()
    np.testing.assert_array_equal(ranges.lo, index.min(0))
    np.testing.assert_array_equal(ranges.hi, index.max(0))
    xn = descriptors.normalize(index, ranges, FIELDS)
    assert np.all(np.abs(xn) <= _half_width(ranges) * (1 + 1e-6) + 1e-6)

    gen = _tiny_generator(desc, clip_at)
    plan, arrays = generator.plan(gen, desc, min_separable=min_separable)
    normed = descriptors.normalize(index, gen.index_ranges, FIELDS, out_of_range="clip")
    offsets = np.cumsum([0] + [g.size for g in desc.grids])
    for group, rows, cols in zip(plan.groups, arrays["rows"], arrays["cols"], strict=True):
        start = 0
        for t in group:
            r = plan.shapes[t][-1]
            expected = normed[offsets[t] : offsets[t + 1]].reshape(len(cols), r, len(FIELDS))
            np.testing.assert_allclose(
                cols[:, None] + rows[None, start : start + r], expected, rtol=0, atol=1e-5
            )
            start += r
        assert start == len(rows)
    direct = [index[offsets[t] : offsets[t + 1]] for t, sep in enumerate(plan.separable) if not sep]
    np.testing.assert_array_equal(
        arrays["direct"], np.concatenate(direct) if direct else np.zeros((0, len(FIELDS)))
    )
    assert sorted(t for g in plan.groups for t in g) == [
        t for t, sep in enumerate(plan.separable) if sep
    ]


# ----------------------------------------------------------------------------- generation

#: One generator for the direct-path property, so examples of one size share compilations.
_RANGES = descriptors.Ranges((-1.0,) * len(FIELDS), (40.0,) * len(FIELDS))
_GEN = generator.Generator(index_ranges=_RANGES, **TINY)
#: Jitted generation; the generator and the chunk size are static.
_generate = jax.jit(generator.generate, static_argnums=0, static_argnames="chunk_size")


@_settings(10)
@given(
    n=st.sampled_from((37, 150)),
    chunk=st.integers(1, 160),
    seed=st.integers(0, 2**32 - 1),
)
def test_chunked_generation_equals_unchunked(n, chunk, seed):
    """Any chunk size (padding, 8-row alignment, a single chunk) gives the one-pass weights."""
    variables = generator.init(_GEN, jax.random.key(seed))
    index = jnp.asarray(_valid_index(_RANGES, seed, n))
    full = _generate(_GEN, variables, index)
    chunked = _generate(_GEN, variables, index, chunk_size=chunk)
    assert chunked.shape == (n,)
    _assert_close(chunked, full)


# The planned properties evaluate both sides in one program: one compilation per example.


@functools.partial(jax.jit, static_argnums=(0, 2, 4, 5))
def _one_pass_and_chunked(gen, variables, plan, arrays, chunk_size, remat):
    one_pass = generator.generate_planned(gen, variables, plan, arrays)
    chunked = generator.generate_planned(
        gen, variables, plan, arrays, chunk_size=chunk_size, remat=remat
    )
    return one_pass, chunked


@_settings(6)
@given(
    desc=_models(),
    chunk=st.integers(1, 80),
    remat=st.booleans(),
    key=st.integers(0, 2**16),
)
def test_chunked_planned_generation_equals_unchunked(desc, chunk, remat, key):
    """The same on the planned path, where a separable group takes ``chunk // columns`` rows
    at a time and the direct rows ``chunk`` at a time."""
    gen = _tiny_generator(desc, None)
    variables = generator.init(gen, jax.random.key(key))
    plan, arrays = generator.plan(gen, desc, min_separable=1)
    one_pass, chunked = _one_pass_and_chunked(gen, variables, plan, arrays, chunk, remat)
    assert chunked.shape == (desc.num_params,)
    _assert_close(chunked, one_pass)


def _ungrouped(plan, arrays):
    """``plan`` with every separable tensor in a group of its own."""
    groups, linear, rows, cols = [], [], [], []
    for group, lin, group_rows, group_cols in zip(
        plan.groups, plan.linear, arrays["rows"], arrays["cols"], strict=True
    ):
        start = 0
        for t in group:
            r = plan.shapes[t][-1]
            groups.append((t,))
            linear.append(lin)
            rows.append(group_rows[start : start + r])
            cols.append(group_cols)
            start += r
    plan = dataclasses.replace(plan, groups=tuple(groups), linear=tuple(linear))
    return plan, dict(arrays, rows=rows, cols=cols)


@functools.partial(jax.jit, static_argnums=(0, 2, 4))
def _grouped_ungrouped_unplanned(gen, variables, plan, arrays, plan1, arrays1, index):
    return (
        generator.generate_planned(gen, variables, plan, arrays),
        generator.generate_planned(gen, variables, plan1, arrays1),
        generator.generate(gen, variables, index),
    )


@_settings(6)
@given(
    desc=_models(),
    clip_at=st.sampled_from((None, 1.0)),
    min_separable=st.sampled_from((1, 8)),
    key=st.integers(0, 2**16),
)
def test_grouped_generation_equals_ungrouped(desc, clip_at, min_separable, key):
    """Stacking the rows of tensors with equal columns into one group changes nothing: the
    grouped plan gives the weights of one group per tensor, and of no plan at all."""
    gen = _tiny_generator(desc, clip_at)
    variables = generator.init(gen, jax.random.key(key))
    plan, arrays = generator.plan(gen, desc, min_separable=min_separable)
    grouped, ungrouped, unplanned = _grouped_ungrouped_unplanned(
        gen, variables, plan, arrays, *_ungrouped(plan, arrays), desc.index
    )
    assert grouped.shape == (desc.num_params,)
    _assert_close(grouped, ungrouped)
    _assert_close(grouped, unplanned)
