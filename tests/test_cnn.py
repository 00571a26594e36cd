"""Tests for the reference CNN / ResNet family (uhn_jax.models.cnn) and conv descriptors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax import generator
from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts

M = -1.0


def _desc(model):
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    return layout, descriptors.build(layout, model.layers(), model.global_fields())


@pytest.mark.parametrize(
    "shape, depth, count",
    [
        ((28, 28), 2, 74_762),  # reference MNIST CNN
        ((32, 32, 3), 2, 75_050),  # ResNet-8 (multi-task CPU mix)
        ((32, 32, 3), 6, 269_034),  # ResNet-20
        ((32, 32, 3), 10, 463_018),  # ResNet-32
        ((32, 32, 3), 14, 657_002),  # ResNet-44
        ((32, 32, 3), 18, 850_986),  # ResNet-56
    ],
)
def test_reference_parameter_counts(shape, depth, count):
    model = base_models.CNN(input_shape=shape, num_classes=10, depths=(depth,) * 3)
    layout, desc = _desc(model)
    assert layout.size == count
    assert len(model.layers()) == 3 * depth + 2  # stem + convs + head
    strides = [c[2] for c in model.convs()]
    assert strides.count(2) == 2 and strides[1 + depth] == 2 and strides[1 + 2 * depth] == 2


def test_conv_descriptors_hand_checked():
    # Stem conv 2->4 (k=3), one stage of one residual conv, head 4->3.
    model = base_models.CNN(input_shape=(5, 5, 2), num_classes=3, depths=(1,), widths=(4,))
    layout, desc = _desc(model)
    stem_kernel = desc.grids[1]
    assert stem_kernel.keys == ("layer_000", "kernel") and stem_kernel.shape == (3, 3, 2, 4)
    idx = desc.index
    kernel = layout.leaf(("layer_000", "kernel"))
    rows = idx[kernel.offset : kernel.offset + kernel.size]
    # HWIO in C order: (kh, kw, in, out); the reference's OIHW order differs only in position.
    expected = [
        [0, 1, 0, o, i, kh, kw, M, M, M]
        for kh in range(3)
        for kw in range(3)
        for i in range(2)
        for o in range(4)
    ]
    np.testing.assert_array_equal(rows, np.asarray(expected, np.float32))
    bias = layout.leaf(("layer_001", "bias"))
    np.testing.assert_array_equal(
        idx[bias.offset : bias.offset + 4], [[1, 1, 1, o, M, M, M, M, M, M] for o in range(4)]
    )
    head = layout.leaf(("layer_002", "kernel"))
    np.testing.assert_array_equal(idx[head.offset], [2, 0, 0, 0, 0, M, M, M, M, M])
    # Targets: fan_in = in * k * k.
    t = dict(zip([g.keys for g in desc.grids], desc.targets[:, 1], strict=True))
    assert t[("layer_000", "kernel")] == pytest.approx(1 / math.sqrt(3 * 2 * 9))
    assert t[("layer_001", "bias")] == pytest.approx(1 / math.sqrt(3 * 4 * 9))
    # Structure: stem has no norm/activation; the residual conv has GN(4), LeakyReLU, a skip.
    s = desc.structure
    names = descriptors.STRUCTURE_FIELDS
    assert s[0, names.index("norm_type")] == 0 and s[0, names.index("group_num")] == 0
    assert s[1, names.index("shortcut_type")] == 1 and s[1, names.index("group_num")] == 4
    assert s[1, names.index("kernel_size")] == 3 and s[1, names.index("activation_param")] == 0.1
    assert s[2, names.index("input_pooling_reshape_type")] == 1  # AVG_POOLING head
    assert desc.global_[descriptors.GLOBAL_FIELDS.index("cnn_stage_num")] == 2


def test_transition_descriptor_and_stride():
    model = base_models.CNN(input_shape=(8, 8, 1), num_classes=2, depths=(1, 2), widths=(4, 8))
    _, desc = _desc(model)
    names = descriptors.STRUCTURE_FIELDS
    pooling = desc.structure[:, names.index("stage_wise_pooling_type")]
    np.testing.assert_array_equal(pooling, [0, 0, 3, 0, 0])  # CONV_POOLING on the transition
    np.testing.assert_array_equal(desc.structure[:, names.index("shortcut_type")], [0, 1, 0, 1, 0])


def _np_conv(x, w, b, stride):
    # x (B, H, W, C), w (k, k, I, O), "same" padding k//2.
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    h_out = (x.shape[1] + 2 * p - k) // stride + 1
    w_out = (x.shape[2] + 2 * p - k) // stride + 1
    out = np.zeros((x.shape[0], h_out, w_out, w.shape[3]))
    for i in range(h_out):
        for j in range(w_out):
            patch = xp[:, i * stride : i * stride + k, j * stride : j * stride + k, :]
            out[:, i, j] = np.einsum("bhwi,hwio->bo", patch, w)
    return out + b


def _np_gn(x, g):
    b, h, w, c = x.shape
    xg = x.reshape(b, h, w, g, c // g)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) / np.sqrt(var + 1e-5)).reshape(b, h, w, c)


def test_forward_matches_a_hand_written_reference():
    model = base_models.CNN(input_shape=(6, 6, 2), num_classes=3, depths=(2, 1), widths=(4, 8))
    params = jax.device_get(model.init(jax.random.key(1)))
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 6, 6, 2)))

    def act(h):
        return np.where(h > 0, h, 0.1 * h)

    p = [params[f"layer_{i:03d}"] for i in range(5)]
    h = _np_conv(x, p[0]["kernel"], p[0]["bias"], 1)  # stem: no act, no norm
    h = h + _np_conv(_np_gn(act(h), 4), p[1]["kernel"], p[1]["bias"], 1)  # residual
    h = h + _np_conv(_np_gn(act(h), 4), p[2]["kernel"], p[2]["bias"], 1)  # residual
    h = _np_conv(_np_gn(act(h), 4), p[3]["kernel"], p[3]["bias"], 2)  # transition, no skip
    logits = h.mean(axis=(1, 2)) @ p[4]["kernel"] + p[4]["bias"]  # head: no act or norm
    np.testing.assert_allclose(model.apply(params, jnp.asarray(x)), logits, rtol=1e-4, atol=1e-4)


def test_chunked_generation_equals_unchunked_at_resnet_shapes():
    # ResNet-20's layer structure (6 convs a stage) at small widths.
    model = base_models.CNN(input_shape=(8, 8, 3), num_classes=10, widths=(4, 8, 8))
    _, desc = _desc(model)
    gen = generator.Generator(
        index_ranges=desc.index_ranges(), hidden=16, n_freqs=64, matmul_dtype="float32"
    )
    v = generator.init(gen, jax.random.key(0))
    plan, arrays = generator.plan(gen, desc, min_separable=256)
    assert any(plan.separable) and not all(plan.separable)
    # The repeated convs of a stage share their columns and are generated as one group.
    assert len(plan.groups) < sum(plan.separable)
    assert max(len(g) for g in plan.groups) >= 5
    run = jax.jit(
        lambda gen, v, plan, arrays, chunk: generator.generate_planned(
            gen, v, plan, arrays, chunk_size=chunk
        ),
        static_argnums=(0, 2, 4),
    )
    full = run(gen, v, plan, arrays, None)
    assert full.shape == (desc.num_params,)
    scale = float(jnp.abs(full).max())
    direct = generator.generate(gen, v, desc.index)
    np.testing.assert_allclose(full, direct, atol=5e-4 * scale, rtol=0)
    # Chunks change the matmul blocking; float32 rounding of the angle-addition first layer then
    # differs by ~1e-4 of the output scale, as between the separable and the direct path.
    for chunk in (64, 300):
        np.testing.assert_allclose(run(gen, v, plan, arrays, chunk), full, atol=3e-4 * scale)


def test_bad_arguments():
    with pytest.raises(ValueError, match="equal length"):
        base_models.CNN(input_shape=(8, 8, 1), num_classes=2, depths=(1, 2), widths=(4,))
    with pytest.raises(ValueError, match="divisible"):
        base_models.CNN(input_shape=(8, 8, 1), num_classes=2, depths=(1,), widths=(6,))
    with pytest.raises(ValueError, match="odd"):
        base_models.CNN(
            input_shape=(8, 8, 1), num_classes=2, depths=(1,), widths=(4,), kernel_size=2
        )
