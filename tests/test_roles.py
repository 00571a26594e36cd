"""Tests for uhn_jax.core.roles: leaf describers, layer kinds, generic fallback, errors."""

import warnings

import flax.linen as nn
import numpy as np
import pytest

from uhn_jax.core import descriptors, layouts, roles

M = -1.0  # the "unused field" value


def _info(path, shape, module=None, parent=None, siblings=None, value=None, dtype=np.float32):
    value = np.full(shape, 0.5, dtype) if value is None else value
    return roles.LeafInfo(
        tuple(path), tuple(shape), np.dtype(dtype), module, parent, value, siblings or {}
    )


def _layer(leaves):
    """Leaves of one module: each sees all as siblings."""
    siblings = {p[-1]: s for p, s, *_ in leaves}
    return [_info(p, s, *rest, siblings=siblings) for p, s, *rest in leaves]


def _desc(infos):
    specs = roles.describe(infos)
    tree = {}
    for info in infos:
        node = tree
        for k in info.path[:-1]:
            node = node.setdefault(k, {})
        node[info.path[-1]] = np.zeros(info.shape, info.dtype)
    return specs, descriptors.build(layouts.from_params(tree), specs, {})


def test_built_in_kinds_keep_their_codes_and_new_kinds_get_the_next_free_one():
    assert [descriptors.register_kind(t.name.lower()) for t in descriptors.LayerType] == list(
        range(7)
    )
    assert (roles.NORM, roles.CONV_TRANSPOSE, roles.GENERIC) == (7, 8, 9)
    code = descriptors.register_kind("test_roles_kind")
    assert code == max(descriptors._KINDS.values()) and code >= 10
    assert descriptors.register_kind("test_roles_kind") == code  # idempotent
    assert descriptors.kind_name(code) == "test_roles_kind"
    assert descriptors.register_kind("test_roles_fixed", 1000) == 1000
    with pytest.raises(ValueError, match="already has code"):
        descriptors.register_kind("test_roles_fixed", 1001)
    with pytest.raises(ValueError, match="taken"):
        descriptors.register_kind("test_roles_other", 0)


def test_dense_hand_checked_through_build():
    dense = nn.Dense(2)
    infos = _layer(
        [
            (("Block_0", "Dense_0", "kernel"), (3, 2), dense),
            (("Block_0", "Dense_0", "bias"), (2,), dense),
        ]
    )
    specs, desc = _desc(infos)
    assert [s.name for s in specs] == ["Block_0/Dense_0"]
    assert specs[0].layer_type == descriptors.LayerType.LINEAR
    assert dict(specs[0].fields) == {"input_size": 3, "output_size": 2, "bias_type": 1}
    expected = [[0, 0, 1, o, M, M, M, M, M, M] for o in range(2)] + [
        [0, 0, 0, o, i, M, M, M, M, M] for i in range(3) for o in range(2)
    ]
    np.testing.assert_array_equal(desc.index, np.asarray(expected, np.float32))
    np.testing.assert_allclose(desc.targets, [[0.5, 0.0], [0.5, 0.0]])  # the leaves' own stats


def test_attention_kernels_fold_heads_into_one_field():
    # Linen MHA: query kernel (E, heads, head_dim), out kernel (heads, head_dim, E).
    mha = nn.MultiHeadDotProductAttention(num_heads=2)
    q, out = nn.DenseGeneral((2, 3)), nn.DenseGeneral(4, axis=(-2, -1))
    infos = _layer(
        [
            (("mha", "query", "kernel"), (4, 2, 3), q, mha),
            (("mha", "query", "bias"), (2, 3), q, mha),
        ]
    )
    infos += _layer([(("mha", "out", "kernel"), (2, 3, 4), out, mha)])
    specs, desc = _desc(infos)
    assert {s.name: s.layer_type for s in specs} == {"mha/query": 5, "mha/out": 5}
    assert dict(specs[1].fields)["num_heads"] == 2 and dict(specs[0].fields)["num_heads"] == 2
    by_keys = {g.keys: g for g in desc.grids}
    kernel = by_keys[("mha", "query", "kernel")]
    assert kernel.shape == (4, 6) and kernel.const[2] == 0  # param_type 0 = query kernel
    rows = kernel.materialize().reshape(4, 2, 3, 10)
    assert rows[1, 1, 2, 4] == 1 and rows[1, 1, 2, 3] == 1 * 3 + 2  # output_idx = h * D + d
    assert by_keys[("mha", "query", "bias")].const[2] == 3
    out_rows = by_keys[("mha", "out", "kernel")].materialize().reshape(2, 3, 4, 10)
    assert out_rows[1, 2, 3, 4] == 5 and out_rows[1, 2, 3, 3] == 3  # input_idx = h * D + d
    # A plain DenseGeneral is kind "linear".
    plain = roles.describe(_layer([(("dg", "kernel"), (4, 2, 3), q)]))
    assert plain[0].layer_type == descriptors.LayerType.LINEAR


@pytest.mark.parametrize(
    ("kernel", "axes"),
    [
        ((5, 2, 4), ("kernel_w_idx", "input_idx", "output_idx")),
        ((3, 3, 2, 4), ("kernel_h_idx", "kernel_w_idx", "input_idx", "output_idx")),
        ((2, 3, 3, 2, 4), ("kernel_h_idx",) * 2 + ("kernel_w_idx", "input_idx", "output_idx")),
    ],
)
def test_conv_of_any_rank_with_groups(kernel, axes):
    conv = nn.Conv(4, kernel[:-2], feature_group_count=3)
    infos = _layer([(("c", "kernel"), kernel, conv), (("c", "bias"), (4,), conv)])
    (spec,) = roles.describe(infos)
    assert spec.layer_type == descriptors.LayerType.CONV
    assert dict(spec.roles)["kernel"].axes == axes
    fields = dict(spec.fields)
    assert fields["input_size"] == 6 and fields["group_num"] == 3
    assert fields["kernel_size"] == max(kernel[:-2])
    transpose = roles.describe(
        _layer([(("t", "kernel"), kernel, nn.ConvTranspose(4, kernel[:-2]))])
    )
    assert transpose[0].layer_type == roles.CONV_TRANSPOSE


def test_norms_and_embed():
    cases = [
        (nn.LayerNorm(), 1),
        (nn.RMSNorm(), 2),
        (nn.GroupNorm(num_groups=2), 3),
        (nn.BatchNorm(), 4),
    ]
    for module, norm_type in cases:
        infos = _layer([(("n", "scale"), (4,), module), (("n", "bias"), (4,), module)])
        (spec,) = roles.describe(infos)
        assert spec.layer_type == roles.NORM and spec.get("norm_type") == norm_type
        assert {k: r.param_type for k, r in spec.roles} == {"scale": 0, "bias": 1}
    assert (
        spec.get("group_num") == 0
        and roles.describe(_layer([(("g", "scale"), (4,), nn.GroupNorm(num_groups=2))]))[0].get(
            "group_num"
        )
        == 2
    )
    (emb,) = roles.describe(_layer([(("e", "embedding"), (11, 3), nn.Embed(11, 3))]))
    assert emb.layer_type == descriptors.LayerType.EMBEDDING and emb.get("embedding_num") == 11
    assert dict(emb.roles)["embedding"].axes == ("embedding_idx", "output_idx")


class Gate(nn.Module):
    """A user module the library knows nothing about."""

    @nn.compact
    def __call__(self, x):
        return x * self.param("gate", nn.initializers.ones, (x.shape[-1],))


def test_user_describer_by_class_and_by_predicate():
    leaf = _layer([(("Gate_0", "gate"), (3,), Gate())])
    with pytest.warns(UserWarning, match="Gate_0/gate"):
        (before,) = roles.describe(leaf)
    assert before.layer_type == roles.GENERIC

    def gate(info):
        return roles.Description("test_roles_gate", 0, ("input_idx",), {"input_size": 3}, (1, 0.1))

    roles.register(Gate, "gate", gate)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (after,) = roles.describe(leaf)
        assert descriptors.kind_name(after.layer_type) == "test_roles_gate"
        assert dict(after.roles)["gate"] == descriptors.TensorRole(0, ("input_idx",), (1.0, 0.1))
        # A newer predicate-based describer wins; returning None passes the leaf on.
        seen = []

        @roles.register(lambda info: info.name == "gate")
        def spy(info):
            seen.append(info.path)

        assert roles.describe(leaf)[0].layer_type == after.layer_type
        assert seen == [("Gate_0", "gate")]
        roles.unregister(spy)
    finally:
        roles.unregister(gate)
    with pytest.warns(UserWarning):
        assert roles.describe(leaf)[0].layer_type == roles.GENERIC


def test_generic_fallback_warns_once_naming_every_leaf():
    infos = [_info(("a", "w"), (2, 3, 4)), _info(("b", "v"), ()), _info(("b", "u"), (5,))]
    with pytest.warns(UserWarning) as record:
        specs = roles.describe(infos)
    assert len(record) == 1 and all(p in str(record[0].message) for p in ("a/w", "b/v", "b/u"))
    assert [s.layer_type for s in specs] == [roles.GENERIC] * 2
    a, b = (dict(s.roles) for s in specs)
    assert a["w"].axes == ("input_idx", "kernel_h_idx", "output_idx")
    assert b["u"].axes == ("output_idx",) and b["v"].axes == ()
    assert (b["u"].param_type, b["v"].param_type) == (0, 1)  # sorted tensor names


def test_undescribable_leaves_raise_naming_the_leaf():
    with pytest.raises(ValueError, match="params leaf deep/w has 8 axes"):
        roles.describe([_info(("deep", "w"), (1,) * 8)])
    with pytest.raises(ValueError, match="params leaf t/ids has dtype int32"):
        roles.describe([_info(("t", "ids"), (3,), dtype=np.int32)])


@pytest.mark.parametrize(
    ("description", "match"),
    [
        (roles.Description("linear", 0, ("output_idx",)), r"leaf g/w .* has shape \(2, 3\) but"),
        (roles.Description("linear", 0, ("output_idx", "colour")), "'colour' is not one of"),
        (roles.Description("linear", 0, ("layer_idx", "output_idx")), "'layer_idx' is not one"),
        (roles.Description("linear", -1, ("input_idx", "output_idx")), "param_type"),
        (roles.Description("linear", 0, ("input_idx", "output_idx"), {"colour": 1}), "colour"),
        (roles.Description("linear", 0, ("input_idx", "output_idx"), target=(0, -1)), "target"),
        ((0, ("input_idx", "output_idx")), "not a roles.Description"),
    ],
)
def test_bad_describer_output_raises_naming_the_leaf(description, match):
    def bad(info):
        return description

    roles.register(lambda info: info.path == ("g", "w"), fn=bad)
    try:
        with pytest.raises(ValueError, match=match):
            roles.describe([_info(("g", "w"), (2, 3))])
    finally:
        roles.unregister(bad)


def test_leaves_of_one_layer_must_agree():
    def first(info):
        return roles.Description("linear", 0, ("output_idx",), {"output_size": 2})

    def other_kind(info):
        return roles.Description("embedding", 1, ("output_idx",))

    roles.register(lambda info: info.name == "a", fn=first)
    try:
        for fn, match in [
            (other_kind, "described as different kinds"),
            (lambda info: roles.Description("linear", 0, ("output_idx",)), "share param_type 0"),
            (
                lambda i: roles.Description("linear", 1, ("output_idx",), {"output_size": 3}),
                "disagree",
            ),
        ]:
            roles.register(lambda info: info.name == "b", fn=fn)
            with pytest.raises(ValueError, match=match):
                roles.describe([_info(("l", "a"), (2,)), _info(("l", "b"), (2,))])
            roles.unregister(fn)
    finally:
        roles.unregister(first)


def test_non_adjacent_axes_cannot_share_a_field():
    with pytest.raises(ValueError, match="non-adjacent"):
        descriptors.fold_axes((2, 3, 4), ("output_idx", "input_idx", "output_idx"), "leaf x")
    assert descriptors.fold_axes((2, 3, 4), ("input_idx",) + ("output_idx",) * 2, "x") == (
        (2, 12),
        (4, 3),
    )
