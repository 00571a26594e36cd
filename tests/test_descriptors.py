"""Tests for uhn_jax.descriptors, hand-checked on a 2-layer toy MLP."""

import hashlib
import math

import jax
import numpy as np
import pytest

from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts
from uhn_jax.models import gnn

M = -1.0  # the "unused field" value


def _toy():
    # Linear 3->2 (first layer), head 2->2.
    model = base_models.MLP(input_shape=(3,), num_classes=2, widths=(2,))
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    return model, layout, descriptors.build(layout, model.layers(), model.global_fields())


def test_index_descriptors_hand_checked():
    _, layout, desc = _toy()
    idx = desc.index
    assert idx.shape == (14, 10) and idx.dtype == np.float32
    expected = (
        # layer_000/bias (2,): layer 0, LINEAR, param 1, out=o
        [[0, 0, 1, o, M, M, M, M, M, M] for o in range(2)]
        # layer_000/kernel (in=3, out=2), C order over (in, out)
        + [[0, 0, 0, o, i, M, M, M, M, M] for i in range(3) for o in range(2)]
        # layer_001/bias, layer_001/kernel
        + [[1, 0, 1, o, M, M, M, M, M, M] for o in range(2)]
        + [[1, 0, 0, o, i, M, M, M, M, M] for i in range(2) for o in range(2)]
    )
    np.testing.assert_array_equal(idx, np.asarray(expected, np.float32))
    # Grid form: constants plus the varying fields per axis, without materialising.
    kernel = desc.grids[1]
    assert kernel.keys == ("layer_000", "kernel") and kernel.shape == (3, 2)
    assert kernel.axes == (4, 3)  # input_idx along axis 0, output_idx along axis 1
    np.testing.assert_array_equal(desc.segment_ids, [0, 0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 3, 3])


def test_structure_and_global_hand_checked():
    _, _, desc = _toy()
    s = desc.structure
    assert s.shape == (2, 21)
    row0 = [0, 0, 1, 0, 0, 2, 3, 0, 0, 0, 3] + [0] * 10
    row1 = [1, 0, 1, 1, 0, 2, 2, 1, 0.1, 0, 0] + [0] * 10
    np.testing.assert_allclose(s, np.asarray([row0, row1], np.float32))
    np.testing.assert_array_equal(desc.global_, [1, 0, 0, 2, 0, 0, 0, 0])
    assert desc.structure_input.shape == (2, 29)
    np.testing.assert_array_equal(desc.structure_input[1, :8], desc.global_)


def test_targets_are_pytorch_default_uniform_std():
    _, _, desc = _toy()
    np.testing.assert_allclose(
        desc.targets[:, 1], [1 / 3, 1 / 3, 1 / math.sqrt(6), 1 / math.sqrt(6)], rtol=1e-6
    )
    np.testing.assert_array_equal(desc.targets[:, 0], 0)


def test_index_ranges_from_grids():
    _, _, desc = _toy()
    r = desc.index_ranges()
    assert r.lo == (0, 0, 0, 0, -1, -1, -1, -1, -1, -1)
    assert r.hi == (1, 0, 1, 1, 2, -1, -1, -1, -1, -1)
    # Bounds from grids equal the bounds of the materialised matrix.
    np.testing.assert_array_equal(r.lo, desc.index.min(0))
    np.testing.assert_array_equal(r.hi, desc.index.max(0))


def test_build_is_cached_per_architecture():
    model, layout, desc = _toy()
    assert descriptors.build(layout, model.layers(), model.global_fields()) is desc


def test_normalize_uniform_moments_and_zero_range():
    r = descriptors.Ranges((0.0, 5.0), (10.0, 5.0))
    x = np.stack([np.linspace(0, 10, 100001), np.full(100001, 5.0)], 1).astype(np.float32)
    xn = descriptors.normalize(x, r, ("a", "b"))
    assert abs(xn[:, 0].mean()) < 1e-4 and abs(xn[:, 0].std() - 1) < 1e-3
    np.testing.assert_array_equal(xn[:, 1], 0.0)  # zero-width range, in-range value -> 0


def test_out_of_range_is_an_error_not_a_316x_blowup():
    r = descriptors.Ranges((0.0, 5.0), (10.0, 5.0))
    x = np.asarray([[1.0, 6.0]], np.float32)  # field b leaves its zero-width range
    with pytest.raises(ValueError, match=r"field 'b' .* \[6, 6\].*\[5, 5\]"):
        descriptors.normalize(x, r, ("a", "b"))
    clipped = descriptors.normalize(x, r, ("a", "b"), out_of_range="clip")
    assert clipped[0, 1] == 0.0  # clamped to the constant, not multiplied by ~316
    with pytest.raises(ValueError, match="out_of_range"):
        descriptors.normalize(x, r, ("a", "b"), out_of_range="ignore")


def test_ranges_union_and_validation():
    a = descriptors.Ranges((0.0, 1.0), (2.0, 1.0))
    b = descriptors.Ranges((-1.0, 3.0), (1.0, 4.0))
    u = descriptors.union_all([a, b])
    assert u.lo == (-1.0, 1.0) and u.hi == (2.0, 4.0)
    with pytest.raises(ValueError, match="lo 2.0 > hi 1.0"):
        descriptors.Ranges((2.0,), (1.0,))


def test_unclaimed_leaf_and_bad_shapes_raise():
    model, layout, _ = _toy()
    bad = layouts.from_params({"layer_000": {"kernel": np.zeros((3, 2)), "extra": np.zeros(2)}})
    with pytest.raises(ValueError, match="not 'extra'"):
        descriptors.build(bad, model.layers()[:1], {})
    wrong_rank = layouts.from_params({"layer_000": {"kernel": np.zeros((3, 2, 1))}})
    with pytest.raises(ValueError, match="role names 2 axes"):
        descriptors.build(wrong_rank, model.layers()[:1], {})
    stray = layouts.from_params({"other": {"kernel": np.zeros((3, 2))}})
    with pytest.raises(ValueError, match="not a tensor of a declared layer"):
        descriptors.build(stray, model.layers()[:1], {})
    with pytest.raises(ValueError, match="unknown global"):
        descriptors.build(layout, model.layers(), {"colour": 1})
    with pytest.raises(ValueError, match="unknown structure field"):
        descriptors.LayerSpec("x", descriptors.LayerType.LINEAR, (("colour", 1.0),))


def test_new_layer_types_register_in_one_place():
    # Everything a layer type needs is one registered function naming its tensors' roles.
    calls = []
    saved = descriptors._LAYER_FNS[descriptors.LayerType.EMBEDDING]

    @descriptors.register_layer(descriptors.LayerType.EMBEDDING)
    def embedding(layer):
        calls.append(layer.name)
        return {"table": descriptors.TensorRole(0, ("embedding_idx", "output_idx"), (0.0, 1.0))}

    try:
        layout = layouts.from_params({"emb": {"table": np.zeros((5, 3))}})
        layer = descriptors.LayerSpec("emb", descriptors.LayerType.EMBEDDING)
        desc = descriptors.build(layout, [layer], {})
        assert calls == ["emb"]
        np.testing.assert_array_equal(desc.index[7], [0, 4, 0, 1, M, M, M, 2, M, M])
    finally:
        descriptors._LAYER_FNS[descriptors.LayerType.EMBEDDING] = saved


#: sha256 (first 16 hex digits) of every descriptor array of each library model, recorded with
#: the closed-LayerType implementation before layer names became paths and kinds became open.
#: Update only for a deliberate change of the descriptors (it breaks trained generators).
GOLDEN = {
    "mlp": "910a90a2449bb78e",
    "cnn": "7a7bd38f6654e37e",
    "gcn": "6e6d0959b051118e",
    "gat": "750b35c1ddb335df",
    "transformer": "94b15c85a454e61f",
    "kan": "18f1e8fe6cc50b07",
    "recursive": "da6aa6b943775859",
}


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("mlp", base_models.MLP(input_shape=(2, 3), num_classes=4, widths=(5, 5, 7))),
        ("cnn", base_models.CNN((6, 6, 2), 3, depths=(2, 1), widths=(4, 8))),
        ("gcn", gnn.GCN(12, 3)),
        ("gat", gnn.GAT(12, 3)),
        (
            "transformer",
            base_models.Transformer(
                vocab_size=20, num_classes=3, max_len=6, embed_dim=8, num_heads=2, num_encoders=1
            ),
        ),
        ("kan", base_models.KAN(2, 1)),
        (
            "recursive",
            base_models.RecursiveUHN(embed_dim=16, index_features=32, num_heads=4, index_blocks=2),
        ),
    ],
)
def test_library_models_descriptors_are_bit_identical(name, model):
    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    d = descriptors.build(layout, model.layers(), model.global_fields())
    digest = hashlib.sha256()
    r = d.index_ranges()
    for a in (d.index, d.structure, d.global_, d.targets, d.segment_ids, r.lo, r.hi):
        digest.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    assert digest.hexdigest()[:16] == GOLDEN[name], (
        f"{name}: descriptors changed; if deliberate, update GOLDEN (trained generators break)"
    )


def test_nested_layer_names_and_explicit_folded_roles():
    # params["Block_0"]["attn"]["kernel"] belongs to layer "Block_0/attn"; its (E=2, H=2, D=3)
    # kernel folds (H, D) into output_idx = h * D + d.
    layout = layouts.from_params({"Block_0": {"attn": {"kernel": np.zeros((2, 2, 3))}}})
    role = descriptors.TensorRole(0, ("input_idx", "output_idx", "output_idx"), (0.0, 0.1))
    layer = descriptors.LayerSpec("Block_0/attn", 5, roles=(("kernel", role),))
    desc = descriptors.build(layout, [layer], {})
    assert desc.grids[0].shape == (2, 6) and desc.grids[0].axes == (4, 3)
    expected = [
        [0, 5, 0, h * 3 + d, e, M, M, M, M, M] for e in range(2) for h in range(2) for d in range(3)
    ]
    np.testing.assert_array_equal(desc.index, np.asarray(expected, np.float32))
    # A nested leaf without a declared layer, and a layer kind without a function or roles.
    with pytest.raises(ValueError, match="not a tensor of a declared layer"):
        descriptors.build(layout, [descriptors.LayerSpec("Block_0", 5, roles=layer.roles)], {})
    unknown = descriptors.register_kind("test_descriptors_kind")
    with pytest.raises(ValueError, match="no descriptor function for layer kind"):
        descriptors.build(layout, [descriptors.LayerSpec("Block_0/attn", unknown)], {})
