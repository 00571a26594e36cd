"""Tests for the text Transformer (uhn_jax.models.transformer) and its descriptors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uhn_jax.core import descriptors, layouts
from uhn_jax.data import text as text_data
from uhn_jax.models import transformer

M = -1.0  # the "unused field" value
Transformer = transformer.Transformer


def _layout(model):
    return layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))


def _desc(model):
    return descriptors.build(_layout(model), model.layers(), model.global_fields())


def _random_params(model, seed, scale=0.5):
    """Params of ``model``'s structure with every scalar N(0, scale^2), drawn in numpy.

    No tensor sits at its (often zero) init value, and nothing is compiled.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


def _tokens(rng, lengths, width, vocab):
    """``<cls>`` + random non-special ids, then ``<pad>`` up to ``width``; int32 numpy."""
    x = np.full((len(lengths), width), text_data.PAD_ID, np.int32)
    for r, n in enumerate(lengths):
        x[r, 0] = text_data.CLS_ID
        x[r, 1:n] = rng.integers(3, vocab, n - 1)
    return x


# A small model that exercises every layer kind: two encoders, so both MHA variants (plain and
# pre-normed) appear.
TINY = Transformer(
    vocab_size=11,
    max_len=12,
    num_classes=3,
    embed_dim=8,
    num_encoders=2,
    num_heads=2,
    linears_per_encoder=2,
    dropout_rate=0.0,
)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "model, count",
    [
        (Transformer(5000, 128, 4), 378_372),  # AG News
        (
            Transformer(
                5000,
                512,
                2,
                num_encoders=1,
                dropout_rate=0.4,
                dataset_type=int(descriptors.DatasetType.IMDB),
            ),
            377_858,
        ),
    ],
)
def test_reference_param_counts(model, count):
    layout = _layout(model)
    assert layout.size == count
    e = model.embed_dim
    assert layout.leaf(("layer_000", "tokens")).shape == (5000, e)
    assert layout.leaf(("layer_000", "positions")).shape == (model.max_len, e)
    assert layout.leaf(("layer_001", "query_kernel")).shape == (e, e)
    last = f"layer_{model.num_layers - 1:03d}"
    assert layout.leaf((last, "kernel")).shape == (e, model.num_classes)
    assert model.num_layers == 1 + model.num_encoders * 3 + 1


# ----------------------------------------------------------------------------- descriptors


def test_index_descriptors_hand_checked():
    model = Transformer(7, 5, 3, embed_dim=4, num_encoders=2, num_heads=2, linears_per_encoder=1)
    layout, desc = _layout(model), _desc(model)
    idx = desc.index
    e = 4
    # embedding 7*4 + 5*4; per encoder MHA 4*(16+4) + Linear 20; head 4*3+3.
    assert idx.shape == (48 + 2 * (80 + 20) + 15, 10)

    def row(layer, tensor, *position):
        leaf = layout.leaf((f"layer_{layer:03d}", tensor))
        return idx[leaf.offset + int(np.ravel_multi_index(position, leaf.shape))]

    # Embedding: the token table enumerates EMBEDDING_IDX, the positional table SEQUENCE_IDX.
    np.testing.assert_array_equal(row(0, "tokens", 3, 2), [0, 4, 0, 2, M, M, M, 3, M, M])
    np.testing.assert_array_equal(row(0, "tokens", 6, 3), [0, 4, 0, 3, M, M, M, 6, M, M])
    np.testing.assert_array_equal(row(0, "positions", 4, 1), [0, 4, 1, 1, M, M, M, M, 4, M])
    np.testing.assert_array_equal(row(0, "positions", 0, 0), [0, 4, 1, 0, M, M, M, M, 0, M])
    # MHA (second encoder's is layer 3): param types 0..7, kernels (input, output).
    for name, ptype in (("query", 0), ("key", 1), ("value", 2), ("out", 6)):
        np.testing.assert_array_equal(
            row(3, f"{name}_kernel", 1, 3), [3, 5, ptype, 3, 1, M, M, M, M, M]
        )
    for name, ptype in (("query", 3), ("key", 4), ("value", 5), ("out", 7)):
        np.testing.assert_array_equal(row(3, f"{name}_bias", 2), [3, 5, ptype, 2, M, M, M, M, M, M])
    # Encoder Linear and head: kernel (input, output).
    np.testing.assert_array_equal(row(2, "kernel", 3, 1), [2, 0, 0, 1, 3, M, M, M, M, M])
    np.testing.assert_array_equal(row(5, "kernel", 3, 2), [5, 0, 0, 2, 3, M, M, M, M, M])
    np.testing.assert_array_equal(row(5, "bias", 2), [5, 0, 1, 2, M, M, M, M, M, M])

    layer_type, param_type = idx[:, 1], idx[:, 2].astype(int)
    mha = layer_type == 5
    np.testing.assert_array_equal(
        np.bincount(param_type[mha], minlength=8), 2 * np.array([16, 16, 16, 4, 4, 4, 16, 4])
    )
    emb = layer_type == 4
    assert emb.sum() == 7 * e + 5 * e
    assert ((idx[:, 7] >= 0) == (emb & (param_type == 0))).all()  # only tokens carry a vocab id
    assert ((idx[:, 8] >= 0) == (emb & (param_type == 1))).all()
    assert (idx[emb, 4] == -1).all()  # the embedding has no input index
    assert (idx[:, [5, 6, 9]] == -1).all()  # no kernel or grid indices in a Transformer

    r = desc.index_ranges()
    assert r.lo == (0, 0, 0, 0, -1, -1, -1, -1, -1, -1)
    assert r.hi == (5, 5, 7, 3, 3, -1, -1, 6, 4, -1)


def test_structure_global_and_targets():
    model = Transformer(
        7,
        5,
        3,
        embed_dim=4,
        num_encoders=2,
        num_heads=2,
        linears_per_encoder=1,
        dropout_rate=0.25,
        dataset_type=int(descriptors.DatasetType.MR),
    )
    desc = _desc(model)
    # Columns: idx type bias norm skip out in act act_param dropout pooling | group_num
    # kernel_size stage_pooling num_heads head_concat embedding_num max_sequence_length
    # grid_size spline_order init.
    expected = [
        [0, 4, 0, 0, 0, 4, 0, 0, 0.0, 0.25, 0, 0, 0, 0, 0, 0, 7, 5, 0, 0, 0],  # embedding
        [1, 5, 1, 0, 1, 4, 4, 0, 0.0, 0.25, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0],  # first MHA
        [2, 0, 1, 1, 1, 4, 4, 1, 0.1, 0.25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # Linear
        [3, 5, 1, 1, 1, 4, 4, 1, 0.1, 0.25, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0],  # later MHA
        [4, 0, 1, 1, 1, 4, 4, 1, 0.1, 0.25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # Linear
        [5, 0, 1, 0, 0, 3, 4, 0, 0.0, 0.00, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # head on <cls>
    ]
    np.testing.assert_allclose(desc.structure, np.asarray(expected, np.float32))
    cols = descriptors.STRUCTURE_FIELDS
    assert desc.structure[0, cols.index("embedding_num")] == 7
    assert desc.structure[0, cols.index("max_sequence_length")] == 5
    assert desc.structure[3, cols.index("num_heads")] == 2
    # model_type TRANSFORMER, task TEXT_CLS, dataset MR, 6 layers, 0 CNN stages, 2 encoders.
    np.testing.assert_array_equal(desc.global_, [4, 2, 102, 6, 0, 2, 0, 0])

    targets = {g.keys: tuple(g.target) for g in desc.grids}
    assert targets[("layer_000", "tokens")] == (0, 1)
    assert targets[("layer_000", "positions")] == (0, 0)
    for layer in ("layer_001", "layer_003"):
        for name in ("query", "key", "value"):
            np.testing.assert_allclose(targets[(layer, f"{name}_kernel")], (0, 0.5), rtol=1e-6)
        for name in ("query", "key", "value", "out"):
            assert targets[(layer, f"{name}_bias")] == (0, 0)
        np.testing.assert_allclose(targets[(layer, "out_kernel")], (0, 1 / math.sqrt(12)))
    for layer in ("layer_002", "layer_004", "layer_005"):
        np.testing.assert_allclose(targets[(layer, "kernel")], (0, 1 / math.sqrt(12)))
        np.testing.assert_allclose(targets[(layer, "bias")], (0, 1 / math.sqrt(12)))


def test_init_matches_descriptor_targets():
    model = Transformer(300, 16, 3, embed_dim=32, num_encoders=2, num_heads=4)
    params = model.init(jax.random.key(0))
    layout = layouts.from_params(params)
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    w = np.asarray(layouts.flatten(params, layout))
    for seg, g in enumerate(desc.grids):
        vals = w[desc.segment_ids == seg]
        mean, std = desc.targets[seg]
        if std == 0:
            np.testing.assert_array_equal(vals, mean, err_msg=str(g.keys))
        elif vals.size >= 256:  # the head's few scalars say little about std
            assert abs(vals.mean() - mean) < 4 * std / np.sqrt(vals.size), g.keys
            assert abs(vals.std() - std) < 0.1 * std, g.keys


# ----------------------------------------------------------------------------- attention


def _np_softmax(s):
    s = s - s.max(-1, keepdims=True)
    return np.exp(s) / np.exp(s).sum(-1, keepdims=True)


def _np_mha(p, x, valid, heads):
    """Per-example, per-head loops in float64; heads are column blocks of the projections."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    b, n, e = x.shape
    d = e // heads
    out = np.zeros((b, n, e))
    for i in range(b):
        q = x[i] @ p["query_kernel"] + p["query_bias"]
        k = x[i] @ p["key_kernel"] + p["key_bias"]
        v = x[i] @ p["value_kernel"] + p["value_bias"]
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            s = q[:, cols] @ k[:, cols].T / np.sqrt(d)
            s[:, ~valid[i]] = -np.inf
            out[i, :, cols] = _np_softmax(s) @ v[:, cols]
        out[i] = out[i] @ p["out_kernel"] + p["out_bias"]
    return out


def _np_forward(model, params, tokens):
    """The whole model in numpy float64, written from the spec's layer list."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def ln(h):
        return (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)

    def act(h):
        return np.where(h > 0, h, model.slope * h)

    valid = tokens != 1
    emb = p["layer_000"]
    h = emb["tokens"][tokens] + emb["positions"][: tokens.shape[1]]
    first_mha = True
    for i, kind in enumerate(model.kinds[1:], start=1):
        q = p[f"layer_{i:03d}"]
        if kind == "mha":
            pre = h if first_mha else ln(act(h))
            h = h + _np_mha(q, pre, valid, model.num_heads)
            first_mha = False
        elif kind == "linear":
            h = h + ln(act(h)) @ q["kernel"] + q["bias"]
        else:
            h = h[:, 0] @ q["kernel"] + q["bias"]
    return h


def test_attention_with_padding_mask_matches_numpy():
    model = TINY
    params = _random_params(model, 1)
    p = params["layer_001"]
    x = np.random.default_rng(0).normal(size=(4, 7, 8))
    valid = np.zeros((4, 7), bool)
    for r, n in enumerate([7, 4, 1, 2]):  # row 2: only the CLS position is a valid key
        valid[r, :n] = True
    out = transformer.multi_head_attention(p, jnp.asarray(x, jnp.float32), jnp.asarray(valid), 2)
    np.testing.assert_allclose(out, _np_mha(p, x, valid, 2), rtol=2e-4, atol=2e-5)
    # The mask matters: without it, rows with padding change.
    unmasked = transformer.multi_head_attention(
        p, jnp.asarray(x, jnp.float32), jnp.ones((4, 7), bool), 2
    )
    assert not np.allclose(unmasked[1], out[1], atol=1e-3)
    np.testing.assert_allclose(unmasked[0], out[0], rtol=1e-6)


def test_forward_matches_numpy_reference():
    params = _random_params(TINY, 2)
    tokens = _tokens(np.random.default_rng(1), [9, 5, 1, 12, 3], 12, TINY.vocab_size)
    out = jax.jit(TINY.apply)(params, tokens)
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, _np_forward(TINY, params, tokens), rtol=2e-4, atol=2e-4)


def test_trailing_padding_does_not_change_logits():
    params = _random_params(TINY, 3)
    lengths = [6, 2, 4, 1]
    tokens = _tokens(np.random.default_rng(2), lengths, 6, TINY.vocab_size)
    wide = np.pad(tokens, ((0, 0), (0, 6)), constant_values=text_data.PAD_ID)
    apply = jax.jit(TINY.apply)
    base = apply(params, tokens)
    np.testing.assert_allclose(apply(params, wide), base, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(apply(params, wide[:, :9]), base, rtol=1e-5, atol=1e-5)
    # Same sentences in a batch of different padding width: each row's logits are its own.
    np.testing.assert_allclose(apply(params, wide[1:2, :2]), base[1:2], rtol=1e-5, atol=1e-5)
    # A real token where padding was does change them, so the test above is not vacuous.
    filled = wide.copy()
    filled[1, 2] = 7
    assert not np.allclose(apply(params, filled)[1], base[1], atol=1e-4)


def test_cls_output_ignores_everything_at_padded_positions():
    # All rows have true length 4, padded to 10: the positional rows 4.. and the <pad>
    # embedding may hold anything without changing the logits.
    params = _random_params(TINY, 4)
    tokens = _tokens(np.random.default_rng(3), [4] * 5, 10, TINY.vocab_size)
    apply = jax.jit(TINY.apply)
    base = apply(params, tokens)
    emb = dict(params["layer_000"])
    emb["positions"] = emb["positions"].at[4:].add(5.0)
    emb["tokens"] = emb["tokens"].at[text_data.PAD_ID].set(-7.0)
    np.testing.assert_allclose(apply({**params, "layer_000": emb}, tokens), base, rtol=1e-5)

    def head_sum(p):
        return TINY.apply(p, tokens).sum()

    g = jax.jit(jax.grad(head_sum))(params)["layer_000"]
    assert np.abs(np.asarray(g["positions"][4:])).max() == 0
    assert np.abs(np.asarray(g["tokens"][text_data.PAD_ID])).max() == 0
    assert np.abs(np.asarray(g["positions"][:4])).max() > 0  # the real positions do matter


def test_pad_id_matches_the_text_data():
    assert transformer.PAD_ID == text_data.PAD_ID == 1


# ----------------------------------------------------------------------------- dropout, jit


def test_dropout_only_in_training_with_rng_and_deterministic():
    model = Transformer(11, 12, 3, embed_dim=8, num_encoders=2, num_heads=2, dropout_rate=0.5)
    params = _random_params(model, 5)
    tokens = _tokens(np.random.default_rng(4), [8, 3, 12], 12, model.vocab_size)
    apply = jax.jit(model.apply, static_argnames="train")
    ref = apply(params, tokens)
    np.testing.assert_array_equal(apply(params, tokens, train=True, rng=None), ref)
    np.testing.assert_array_equal(apply(params, tokens, train=False, rng=jax.random.key(0)), ref)
    a = apply(params, tokens, train=True, rng=jax.random.key(1))
    b = apply(params, tokens, train=True, rng=jax.random.key(2))
    np.testing.assert_array_equal(apply(params, tokens, train=True, rng=jax.random.key(1)), a)
    assert not np.allclose(a, ref, atol=1e-3) and not np.allclose(a, b, atol=1e-3)


def test_weights_fn_acts_on_the_attention_weights():
    p = _random_params(TINY, 6)["layer_001"]
    x = jax.random.normal(jax.random.key(7), (2, 5, 8))
    valid = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    mha = jax.jit(transformer.multi_head_attention, static_argnums=3, static_argnames="weights_fn")
    plain = mha(p, x, valid, 2)
    np.testing.assert_allclose(mha(p, x, valid, 2, weights_fn=lambda w: w), plain, rtol=1e-6)
    # Zeroing every weight leaves only the output bias; doubling them doubles the rest.
    zero = mha(p, x, valid, 2, weights_fn=jnp.zeros_like)
    np.testing.assert_allclose(zero, jnp.broadcast_to(p["out_bias"], x.shape), atol=1e-6)
    double = mha(p, x, valid, 2, weights_fn=lambda w: 2 * w)
    np.testing.assert_allclose(double - zero, 2 * (plain - zero), rtol=1e-4, atol=1e-5)


def test_dropout_masks_come_from_one_draw_in_call_order():
    shapes = ((4, 50, 8), (4, 2, 50, 50), (4, 50, 8))
    drop = transformer._Dropout.draw(0.25, jax.random.key(0), shapes)
    outs = [np.asarray(drop(jnp.ones(s))) for s in shapes]
    drop.check_consumed()
    for out in outs:
        assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}  # inverted dropout
        assert abs((out == 0).mean() - 0.25) < 0.03
    assert not np.array_equal(outs[0], outs[2])  # different sites, different masks
    with pytest.raises(AssertionError):
        transformer._Dropout.draw(0.25, jax.random.key(0), shapes)(jnp.ones((3, 3)))
    identity = transformer._Dropout.draw(0.25, None, shapes)
    x = jnp.arange(6.0)
    np.testing.assert_array_equal(identity(x), x)


def test_jit_equals_eager():
    model = Transformer(11, 6, 2, embed_dim=8, num_encoders=1, linears_per_encoder=1)
    params = _random_params(model, 8)
    tokens = _tokens(np.random.default_rng(5), [5, 2], 5, model.vocab_size)
    np.testing.assert_allclose(
        jax.jit(model.apply)(params, tokens), model.apply(params, tokens), rtol=1e-5, atol=1e-6
    )


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_and_config_raise():
    params = _random_params(TINY, 0)
    with pytest.raises(ValueError, match="max_len=12"):
        TINY.apply(params, np.full((2, 13), 1, np.int32))
    with pytest.raises(ValueError, match="sequence length"):
        TINY.apply(params, np.zeros((2, 0), np.int32))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        TINY.apply(params, np.zeros((5,), np.int32))
    with pytest.raises(TypeError, match="integer"):
        TINY.apply(params, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="vocab_size=11"):
        TINY.apply(params, np.asarray([[2, 11]], np.int32))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Transformer(10, 8, 2, embed_dim=10, num_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(0, 8, 2)
    with pytest.raises(ValueError, match="num_encoders"):
        Transformer(10, 8, 2, num_encoders=0)
    with pytest.raises(ValueError, match="linears_per_encoder"):
        Transformer(10, 8, 2, linears_per_encoder=-1)
    with pytest.raises(ValueError, match="dropout_rate"):
        Transformer(10, 8, 2, dropout_rate=1.0)
    # Zero Linears per encoder is a valid (attention-only) model.
    assert Transformer(10, 8, 2, linears_per_encoder=0).kinds == (
        "embedding",
        "mha",
        "mha",
        "head",
    )


# ----------------------------------------------------------------------------- end to end


def _contains_token_task(rng, n, width, vocab, marker=5):
    """Sentences of random length; label 1 iff ``marker`` occurs (half of them), else 0."""
    lengths = rng.integers(2, width + 1, n)
    x = _tokens(rng, lengths, width, vocab)
    x[x == marker] = marker + 1  # remove accidental markers
    y = (np.arange(n) % 2).astype(np.int32)
    for r in np.flatnonzero(y):
        x[r, rng.integers(1, lengths[r])] = marker
    return x, y


def test_learns_a_token_presence_task():
    model = Transformer(
        12,
        10,
        2,
        embed_dim=16,
        num_encoders=1,
        num_heads=2,
        linears_per_encoder=1,
        dropout_rate=0.1,
    )
    rng = np.random.default_rng(0)
    x_train, y_train = _contains_token_task(rng, 256, 10, 12)
    x_test, y_test = _contains_token_task(rng, 256, 10, 12)
    opt = optax.adam(3e-3)

    def loss(p, x, y, key):
        logits = model.apply(p, x, train=True, rng=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # The data are arguments, not closed-over constants, which XLA would try to fold.
    @jax.jit
    def fit(p, x, y, key):
        def step(carry, t):
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p, x, y, jax.random.fold_in(key, t)), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), jnp.arange(200))
        return p

    apply = jax.jit(model.apply)

    def accuracy(p):
        return float((apply(p, x_test).argmax(-1) == y_test).mean())

    params = jax.jit(model.init)(jax.random.key(0))
    before = accuracy(params)
    after = accuracy(fit(params, x_train, y_train, jax.random.key(1)))
    assert after >= 0.95 and after > before + 0.2, (before, after)
