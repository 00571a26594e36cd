"""Tests for the reference graph base models (uhn_jax.models.gnn) and their descriptors."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import pytest

from uhn_jax.core import descriptors, layouts
from uhn_jax.data import graphs as graph_data
from uhn_jax.models import gnn

M = -1.0  # the "unused field" value


def _layout(model):
    return layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))


def _desc(model):
    return descriptors.build(_layout(model), model.layers(), model.global_fields())


def _random_params(model, seed, scale=0.5):
    """Gaussian params of the model's shapes, biases included (numpy: nothing to compile)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _graph(x, senders, receivers):
    return jraph.GraphsTuple(
        nodes=jnp.asarray(x),
        edges=None,
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        n_node=np.asarray([len(x)]),
        n_edge=np.asarray([len(senders)]),
        globals=None,
    )


def _random_edges(rng, n, p, symmetric):
    """Random edges without self loops or duplicates; node ``n - 1`` is isolated."""
    pairs = np.argwhere((rng.random((n, n)) < p) & ~np.eye(n, dtype=bool))
    pairs = pairs[(pairs < n - 1).all(axis=1)]
    if symmetric:
        return graph_data.undirected_edges(pairs, n)
    return pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32)


def _dense_in_adjacency(senders, receivers, n):
    """``A[i, j] = 1`` for every edge ``j -> i``, plus the identity (self loops)."""
    a = np.eye(n)
    a[receivers, senders] = 1.0
    return a


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "model, count",
    [
        (gnn.GCN(1433, 7), 92_231),
        (gnn.GAT(1433, 7), 92_373),
        (gnn.GCN(3703, 6, dataset_type=2), 237_446),
        (gnn.GAT(3703, 6, dataset_type=2), 237_586),
        (gnn.GCN(500, 3, dataset_type=4), 32_259),
        (gnn.GAT(500, 3, output_heads=8, dataset_type=4), 33_779),
    ],
)
def test_reference_parameter_counts(model, count):
    layout = _layout(model)
    assert layout.size == count
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    assert desc.num_params == count and desc.structure.shape == (2, 21)


def test_gat_tensor_shapes_concatenated_and_averaged():
    shapes = jax.eval_shape(gnn.GAT(500, 3, output_heads=8).init, jax.random.key(0))
    got = {(k, t): v.shape for k, layer in shapes.items() for t, v in layer.items()}
    assert got == {
        ("layer_000", "kernel"): (500, 64),
        ("layer_000", "bias"): (64,),  # concatenated heads
        ("layer_000", "att_src"): (64,),
        ("layer_000", "att_dst"): (64,),
        ("layer_001", "kernel"): (64, 24),
        ("layer_001", "bias"): (3,),  # averaged heads
        ("layer_001", "att_src"): (24,),
        ("layer_001", "att_dst"): (24,),
    }


# ----------------------------------------------------------------------------- descriptors


def test_gcn_structure_and_global_descriptors():
    desc = _desc(gnn.GCN(6, 3, hidden=(4,), dropout_rate=0.5, slope=0.1, dataset_type=3))
    #       idx type bias norm skip out in act prm  drop  (rest 0)  init
    row0 = [0, 2, 1, 0, 0, 4, 6, 0, 0.0, 0.5] + [0] * 10 + [0]
    row1 = [1, 2, 1, 0, 0, 3, 4, 1, 0.1, 0.5] + [0] * 10 + [0]
    np.testing.assert_array_equal(desc.structure, np.asarray([row0, row1], np.float32))
    np.testing.assert_array_equal(desc.global_, [2, 1, 3, 2, 0, 0, 0, 0])


def test_gat_structure_descriptors_record_heads_and_concat_type():
    desc = _desc(gnn.GAT(6, 3, hidden=2, heads=4, output_heads=2, elu_alpha=1.5))
    s = {name: desc.structure[:, i] for i, name in enumerate(descriptors.STRUCTURE_FIELDS)}
    np.testing.assert_array_equal(s["layer_type"], [3, 3])
    np.testing.assert_array_equal(s["output_size"], [2, 3])  # per-head widths
    np.testing.assert_array_equal(s["input_size"], [6, 8])
    np.testing.assert_array_equal(s["num_heads"], [4, 2])
    np.testing.assert_array_equal(s["head_concat_type"], [0, 1])  # CONCAT, then AVG
    np.testing.assert_array_equal(s["activation_type"], [0, 2])  # none, then ELU
    np.testing.assert_allclose(s["activation_param"], [0, 1.5])
    np.testing.assert_allclose(s["dropout_rate"], [0.6, 0.6])
    np.testing.assert_array_equal(desc.global_[:4], [3, 1, 3, 2])


def test_gat_index_descriptors_are_head_major():
    model = gnn.GAT(3, 2, hidden=2, heads=2, output_heads=2)
    desc = _desc(model)
    rows = {g.keys: g.materialize() for g in desc.grids}

    kernel = rows[("layer_000", "kernel")]  # (in 3, heads*out 4), row-major
    assert kernel.shape == (12, 10)
    np.testing.assert_array_equal(kernel[5], [0, 3, 0, 1, 1, M, M, M, M, M])  # in 1, out 1
    att_src = rows[("layer_001", "att_src")]
    np.testing.assert_array_equal(att_src[:, :5], [[1, 3, 2, o, M] for o in range(4)])
    att_dst = rows[("layer_001", "att_dst")]
    np.testing.assert_array_equal(att_dst[:, 2], 3)
    np.testing.assert_array_equal(rows[("layer_000", "bias")][:, 3], np.arange(4))  # concat
    bias = rows[("layer_001", "bias")]  # averaged: one entry per class
    np.testing.assert_array_equal(bias, [[1, 3, 1, o, M, M, M, M, M, M] for o in range(2)])
    assert desc.index.shape == (_layout(model).size, 10)


@pytest.mark.parametrize(
    "model",
    [gnn.GCN(96, 16, hidden=(64,)), gnn.GAT(96, 8, hidden=16, heads=8, output_heads=4)],
    ids=["gcn", "gat"],
)
def test_init_matches_descriptor_targets(model):
    params = jax.jit(model.init)(jax.random.key(0))
    layout = layouts.from_params(params)
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    w = np.asarray(layouts.flatten(params, layout))
    for seg, g in enumerate(desc.grids):
        vals = w[desc.segment_ids == seg]
        mean, std = desc.targets[seg]
        if std == 0:
            np.testing.assert_array_equal(vals, mean, err_msg=str(g.keys))
        else:
            # Uniform draws: the sample std has relative spread sqrt(0.2 / n).
            assert abs(vals.mean() - mean) < 4 * std / np.sqrt(vals.size), g.keys
            assert abs(vals.std() / std - 1) < 4 * np.sqrt(0.2 / vals.size), g.keys


# ----------------------------------------------------------------------------- forward


def test_gcn_matches_a_dense_reference():
    rng = np.random.default_rng(0)
    n = 12
    senders, receivers = _random_edges(rng, n, 0.3, symmetric=True)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    model = gnn.GCN(5, 3, hidden=(8, 6), slope=0.1)
    params = _random_params(model, 1)

    a_hat = _dense_in_adjacency(senders, receivers, n)
    assert a_hat[n - 1].sum() == 1  # an isolated node keeps only its self loop
    d = 1 / np.sqrt(a_hat.sum(1))
    a_norm = d[:, None] * a_hat * d[None, :]
    h = x.astype(np.float64)
    for i in range(3):
        p = {k: np.asarray(v, np.float64) for k, v in params[f"layer_{i:03d}"].items()}
        if i > 0:
            h = np.where(h > 0, h, 0.1 * h)
        h = a_norm @ (h @ p["kernel"]) + p["bias"]

    graph = _graph(x, senders, receivers)
    out = jax.jit(model.apply)(params, graph)
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)


def _dense_gat(model, params, x, senders, receivers):
    """Logits of a GAT from dense (receiver, sender) attention matrices, in float64."""
    n = len(x)
    mask = _dense_in_adjacency(senders, receivers, n) > 0
    h = x.astype(np.float64)
    for i, (_, out, heads, concat) in enumerate(model.sizes):
        p = {k: np.asarray(v, np.float64) for k, v in params[f"layer_{i:03d}"].items()}
        if i > 0:
            h = np.where(h > 0, h, model.elu_alpha * np.expm1(np.minimum(h, 0)))
        z = (h @ p["kernel"]).reshape(n, heads, out)
        src = np.einsum("nhd,hd->nh", z, p["att_src"].reshape(heads, out))
        dst = np.einsum("nhd,hd->nh", z, p["att_dst"].reshape(heads, out))
        e = dst[:, None, :] + src[None, :, :]  # (receiver i, sender j, head)
        e = np.where(e > 0, e, model.negative_slope * e)
        e = np.where(mask[:, :, None], e, -np.inf)
        a = np.exp(e - e.max(axis=1, keepdims=True))
        a = a / a.sum(axis=1, keepdims=True)
        agg = np.einsum("ijh,jhd->ihd", a, z)
        h = agg.reshape(n, heads * out) if concat == 0 else agg.mean(axis=1)
        h = h + p["bias"]
    return h


def test_gat_matches_a_dense_masked_softmax_reference():
    # A directed graph, so swapping senders and receivers would be caught; 3 averaged heads.
    rng = np.random.default_rng(2)
    n = 10
    senders, receivers = _random_edges(rng, n, 0.3, symmetric=False)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    model = gnn.GAT(4, 3, hidden=5, heads=2, output_heads=3, elu_alpha=0.7)
    params = _random_params(model, 2)
    ref = _dense_gat(model, params, x, senders, receivers)
    out = jax.jit(model.apply)(params, _graph(x, senders, receivers))
    assert out.shape == (n, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_gat_attention_sums_to_one_per_receiver():
    rng = np.random.default_rng(3)
    n, heads, width = 9, 3, 4
    senders, receivers = _random_edges(rng, n, 0.4, symmetric=False)
    z = rng.normal(size=(n, heads, width)).astype(np.float32)
    att_src, att_dst = rng.normal(size=(2, heads, width)).astype(np.float32)

    @jax.jit
    def attention(z, att_src, att_dst, senders, receivers):
        s, r = gnn.add_self_loops(senders, receivers, n)
        return s, r, gnn.gat_attention(z, att_src, att_dst, s, r, 0.2)

    s, r, alpha = map(np.asarray, attention(z, att_src, att_dst, senders, receivers))
    assert alpha.shape == (len(senders) + n, heads) and (alpha > 0).all()
    totals = np.zeros((n, heads))
    np.add.at(totals, r, alpha)
    np.testing.assert_allclose(totals, 1.0, rtol=1e-5)
    assert alpha[-1].tolist() == [1.0] * heads  # the isolated node attends only to itself

    # The same coefficients as a dense masked softmax over each receiver's row.
    e = np.einsum("nhd,hd->nh", z, att_dst)[:, None] + np.einsum("nhd,hd->nh", z, att_src)[None]
    e = np.where(e > 0, e, 0.2 * e)
    e = np.where(_dense_in_adjacency(senders, receivers, n)[:, :, None] > 0, e, -np.inf)
    dense = np.exp(e - e.max(1, keepdims=True))
    dense /= dense.sum(1, keepdims=True)
    np.testing.assert_allclose(alpha, dense[r, s], rtol=1e-5, atol=1e-6)


def test_gcn_edge_weights_are_symmetric_normalisation():
    senders, receivers = graph_data.undirected_edges(np.array([[0, 1], [0, 2]]), 4)

    @jax.jit
    def weights(senders, receivers):
        s, r = gnn.add_self_loops(senders, receivers, 4)
        return s, r, gnn.gcn_edge_weights(s, r, 4)

    s, r, w = (np.asarray(a).tolist() for a in weights(senders, receivers))
    w = dict(zip(zip(s, r, strict=True), w, strict=True))
    assert len(w) == 8  # 4 directed edges and 4 self loops
    # Degrees with self loops: node 0 has 3, nodes 1 and 2 have 2, node 3 has 1.
    np.testing.assert_allclose(w[(1, 0)], 1 / np.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(w[(0, 2)], 1 / np.sqrt(6), rtol=1e-6)
    np.testing.assert_allclose(w[(0, 0)], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(w[(2, 2)], 1 / 2, rtol=1e-6)
    np.testing.assert_allclose(w[(3, 3)], 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize(
    "model",
    [
        gnn.GCN(6, 3, hidden=(8,)),
        gnn.GAT(6, 3, hidden=4, heads=2, output_heads=2, dropout_rate=0.5, attention_dropout=0.0),
        gnn.GAT(6, 3, hidden=4, heads=2, dropout_rate=0.0, attention_dropout=0.5),
    ],
    ids=["gcn", "gat-feature-dropout", "gat-attention-dropout"],
)
def test_dropout_only_in_training_and_deterministic(model):
    rng = np.random.default_rng(0)
    senders, receivers = _random_edges(rng, 8, 0.5, symmetric=True)
    graph = _graph(rng.normal(size=(8, 6)).astype(np.float32), senders, receivers)
    params = _random_params(model, 0)

    # Every variant in one compile, with one copy of the dropout code (vmapped over keys):
    # the random bits dominate the compile time.
    @jax.jit
    def variants(params, keys):
        return (
            model.apply(params, graph),
            model.apply(params, graph, train=False, rng=keys[0]),
            model.apply(params, graph, train=True, rng=None),
            jax.vmap(lambda key: model.apply(params, graph, train=True, rng=key))(keys),
        )

    keys = jnp.stack([jax.random.key(7), jax.random.key(8), jax.random.key(7)])
    clean, eval_with_rng, train_without_rng, (a, b, a_again) = variants(params, keys)
    np.testing.assert_array_equal(eval_with_rng, clean)
    np.testing.assert_array_equal(train_without_rng, clean)
    assert not np.allclose(a, clean) and not np.allclose(a, b)
    np.testing.assert_array_equal(a_again, a)  # same key, same masks


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "model",
    # The GAT trains without dropout: its random bits would double the compile time, and
    # test_dropout_only_in_training_and_deterministic covers both of its dropouts.
    [gnn.GCN(34, 2, hidden=(16,)), gnn.GAT(34, 2, dropout_rate=0.0, attention_dropout=0.0)],
    ids=["gcn", "gat"],
)
def test_direct_training_fits_the_karate_club(model):
    # 8 labelled members (train + val); the 26 test members are never seen.
    data = graph_data.karate_club()
    graph = gnn.graphs_tuple(data)
    fit = data.train_mask | data.val_mask
    y, fit_j = jnp.asarray(data.y), jnp.asarray(fit)
    opt = optax.adam(1e-2)

    def loss(params, key):
        logits = model.apply(params, graph, train=True, rng=key)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(jnp.where(fit_j, ce, 0.0)) / fit_j.sum()

    @jax.jit
    def train(key):
        def step(carry, t):
            params, opt_state = carry
            grads = jax.grad(loss)(params, jax.random.fold_in(key, t))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        params = model.init(key)
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(200))
        return model.apply(params, graph).argmax(-1)

    pred = np.asarray(train(jax.random.key(0)))
    assert (pred[fit] == data.y[fit]).all()
    assert (pred[data.test_mask] == data.y[data.test_mask]).mean() > 0.85


# ----------------------------------------------------------------------------- errors


def test_bad_configs_raise_value_errors():
    with pytest.raises(ValueError, match="num_features"):
        gnn.GCN(0, 3)
    with pytest.raises(ValueError, match="num_classes"):
        gnn.GCN(4, -1)
    with pytest.raises(ValueError, match="hidden"):
        gnn.GCN(4, 3, hidden=(8, 0))
    with pytest.raises(ValueError, match="hidden"):
        gnn.GCN(4, 3, hidden=8)
    with pytest.raises(ValueError, match="dropout_rate"):
        gnn.GCN(4, 3, dropout_rate=1.0)
    with pytest.raises(ValueError, match="heads"):
        gnn.GAT(4, 3, heads=0)
    with pytest.raises(ValueError, match="output_heads"):
        gnn.GAT(4, 3, output_heads=-2)
    with pytest.raises(ValueError, match="attention_dropout"):
        gnn.GAT(4, 3, attention_dropout=-0.1)
    with pytest.raises(ValueError, match="elu_alpha"):
        gnn.GAT(4, 3, elu_alpha=0.0)


def test_gcn_hidden_list_becomes_a_hashable_tuple():
    model = gnn.GCN(4, 3, hidden=[8, 8])
    assert model.hidden == (8, 8) and hash(model) == hash(gnn.GCN(4, 3, hidden=(8, 8)))


@pytest.mark.parametrize("model", [gnn.GCN(4, 3), gnn.GAT(4, 3)], ids=["gcn", "gat"])
def test_apply_rejects_wrong_feature_width(model):
    params = _random_params(model, 0)
    with pytest.raises(ValueError, match=r"\(num_nodes, 4\)"):
        model.apply(params, _graph(np.ones((5, 6), np.float32), [0, 1], [1, 0]))
