"""Tests for the attention hypernetworks of a frozen model (uhn_jax.hypernets.attention and
attention_attach): identity at step 0, training only the pairs, what is transformed, files."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from uhn_jax.hypernets import attention
from uhn_jax.hypernets import attention_attach as aa
from uhn_jax.models import flax_adapter, mlp, transformer


class Block(nn.Module):
    """Self-attention on x, then cross-attention from x to a context of another width."""

    @nn.compact
    def __call__(self, x, context):
        x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="self_attn")(x)
        return x + nn.MultiHeadDotProductAttention(num_heads=2, name="cross_attn")(x, context)


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, context):
        h = Block(name="block")(nn.Dense(8)(x), context)
        return nn.Dense(3)(h.mean(axis=1))


class NoAttention(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))


X = jax.random.normal(jax.random.key(0), (2, 5, 4))
CONTEXT = jax.random.normal(jax.random.key(1), (2, 7, 6))
TOKENS = np.array([[0, 5, 6, 7, 1, 1], [0, 3, 4, 9, 10, 2]])  # <cls> first, <pad> = 1
LABELS = np.array([0, 2])
SMALL = attention.Settings(layer_structure=(1, 0.5, 1))


@pytest.fixture(scope="module")
def linen():
    variables = jax.jit(Net().init)(jax.random.key(2), X, CONTEXT)
    return Net(), variables, (X, CONTEXT)


@pytest.fixture(scope="module")
def text():
    model = transformer.Transformer(
        vocab_size=12, max_len=8, num_classes=3, embed_dim=8, num_heads=2, linears_per_encoder=1
    )
    return model, jax.jit(model.init)(jax.random.key(3)), (TOKENS,)


def _perturbed(params, key, scale=0.3):
    """Params moved off the identity (every leaf plus noise)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, noisy)


@pytest.mark.parametrize("fixture", ["linen", "text"])
@pytest.mark.parametrize(
    "settings",
    [
        attention.Settings(),
        attention.Settings((1, 2, 0.5, 1), "gelu", layer_norm=True, dropout_rate=0.2),
    ],
    ids=["default", "deep_norm_dropout"],
)
def test_outputs_are_unchanged_at_step_0(request, fixture, settings):
    model, frozen, args = request.getfixturevalue(fixture)
    hyper = aa.attach(model, frozen, *args, settings=settings)
    hp = hyper.init(jax.random.key(4))
    expected = model.apply(frozen, *args)
    np.testing.assert_array_equal(hyper.apply(hp, frozen, *args), expected)
    # Compiled, XLA may fuse the model's own ops differently: equal to 1e-6; so in training,
    # with dropout in the pairs.
    apply = jax.jit(hyper.apply)
    np.testing.assert_allclose(apply(hp, frozen, *args), expected, atol=1e-6)
    out = apply(hp, frozen, *args, hyper_rng=jax.random.key(5))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_sites_are_addressed_by_path(linen, text):
    hyper = aa.attach(*linen[:2], *linen[2])
    assert hyper.mechanism == "intercept"
    assert [(s.name, s.key_features, s.value_features) for s in hyper.sites] == [
        ("block/self_attn", 8, 8),
        ("block/cross_attn", 6, 6),  # keys and values come from the 6-wide context
    ]
    hp = hyper.init(jax.random.key(0))
    assert jax.tree.map(jnp.shape, hp["block/cross_attn"]["key"]) == {
        "dense_0": {"kernel": (6, 12), "bias": (12,)},
        "dense_1": {"kernel": (12, 6), "bias": (6,)},
    }
    mlp_8, mlp_6 = 8 * 16 + 16 + 16 * 8 + 8, 6 * 12 + 12 + 12 * 6 + 6  # F -> 2F -> F
    assert hyper.num_params(hp) == 2 * mlp_8 + 2 * mlp_6 == 884
    text_hyper = aa.attach(*text[:2], *text[2], settings=SMALL)
    assert text_hyper.mechanism == "kernels"
    assert [s.name for s in text_hyper.sites] == ["layer_001", "layer_003"]
    # Shapes are all attach reads: abstract params give the same sites.
    abstract = jax.eval_shape(text[0].init, jax.random.key(0))
    assert aa.attach(text[0], abstract, *text[2], settings=SMALL) == text_hyper
    shared = aa.attach(*text[:2], *text[2], settings=attention.Settings(shared=True))
    assert list(shared.init(jax.random.key(0))) == [attention.SHARED]


def _step(hyper, frozen, args, labels):
    """One Adam step on the pairs only; the frozen params are an argument, not trained."""
    tx = optax.adam(1e-2)

    @jax.jit
    def step(hp, opt_state, frozen):
        def loss_fn(hp):
            logits = hyper.apply(hp, frozen, *args)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(hp)
        updates, opt_state = tx.update(grads, opt_state, hp)
        return optax.apply_updates(hp, updates), opt_state, grads

    hp = hyper.init(jax.random.key(6))
    return hp, step(hp, tx.init(hp), frozen)


@pytest.mark.parametrize("fixture", ["linen", "text"])
def test_one_step_moves_the_outputs_and_not_the_frozen_params(request, fixture):
    model, frozen, args = request.getfixturevalue(fixture)
    before = jax.tree.map(np.array, frozen)
    hyper = aa.attach(model, frozen, *args)
    hp0, (hp1, _, grads) = _step(hyper, frozen, args, LABELS)
    # Every pair's last layer gets a gradient (the hidden ones do from the next step on).
    for name in hyper.names:
        for role in attention.ROLES:
            last = max(grads[name][role])
            assert float(jnp.abs(grads[name][role][last]["kernel"]).max()) > 0, (name, role)
    assert not np.allclose(hyper.apply(hp1, frozen, *args), model.apply(frozen, *args))
    jax.tree.map(np.testing.assert_array_equal, frozen, before)
    assert jax.tree.structure(hp1) == jax.tree.structure(hp0)


def _recorder(log):
    """An interceptor recording the input of every query/key/value DenseGeneral."""

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.DenseGeneral) and context.module.name in (
            "query",
            "key",
            "value",
        ):
            log[(context.module.path[-2], context.module.name)] = args[0]
        return next_fun(*args, **kwargs)

    return record


def test_linen_key_and_value_inputs_are_transformed_and_the_query_input_is_not(linen):
    model, frozen, args = linen
    hyper = aa.attach(model, frozen, *args)
    hp = _perturbed(hyper.init(jax.random.key(7)), jax.random.key(8))
    plain, hooked = {}, {}
    with nn.intercept_methods(_recorder(plain)):
        model.apply(frozen, *args)
    with nn.intercept_methods(_recorder(hooked)):
        hyper.apply(hp, frozen, *args)

    def pair(name, role, x):
        net = attention.KVHypernet(hyper.settings)
        return net.apply({"params": hp[name]}, role, x, method=net.transform)

    # self_attn is first: its inputs are the plain run's; q as given, k and v transformed.
    np.testing.assert_array_equal(hooked["self_attn", "query"], plain["self_attn", "query"])
    for role in ("key", "value"):
        want = pair("block/self_attn", role, plain["self_attn", "query"])
        np.testing.assert_allclose(hooked["self_attn", role], want, rtol=1e-6)
        assert not np.allclose(hooked["self_attn", role], plain["self_attn", role])
        # cross_attn's keys and values come from the (unchanged) context.
        want = pair("block/cross_attn", role, CONTEXT)
        np.testing.assert_allclose(hooked["cross_attn", role], want, rtol=1e-6)


class _Recording:
    """A kernel that records what it is multiplied with (``x @ this``)."""

    def __init__(self, kernel, log, key):
        self.kernel, self.log, self.key = kernel, log, key

    def __rmatmul__(self, x):
        self.log[self.key] = x
        return x @ self.kernel


def test_transformer_key_and_value_inputs_are_transformed_and_the_query_input_is_not(text):
    model, params, args = text
    hyper = aa.attach(model, params, *args, settings=SMALL)
    hp = _perturbed(hyper.init(jax.random.key(9)), jax.random.key(10))
    log = {}
    recording = {
        layer: {
            k: _Recording(v, log, (layer, k)) if k.endswith("_kernel") and k != "out_kernel" else v
            for k, v in p.items()
        }
        if layer in ("layer_001", "layer_003")
        else p
        for layer, p in params.items()
    }
    out = hyper.apply(hp, recording, *args)
    np.testing.assert_array_equal(out, hyper.apply(hp, params, *args))
    for layer in ("layer_001", "layer_003"):
        q = log[layer, "query_kernel"]  # the model's own attention input, untransformed
        for role in ("key", "value"):
            net = attention.KVHypernet(SMALL)
            want = net.apply({"params": hp[layer]}, role, q, method=net.transform)
            np.testing.assert_allclose(log[layer, f"{role}_kernel"], want, rtol=1e-6)
            assert not np.allclose(want, q)


@pytest.mark.filterwarnings("ignore:SelfAttention will be deprecated:DeprecationWarning")
def test_flax_model_adapter_and_self_attention_subclass_are_covered():
    class Selfish(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.SelfAttention(num_heads=2)(nn.Dense(8)(x)).sum(axis=(1, 2))

    fm = flax_adapter.FlaxModel.from_linen(Selfish(), X)
    params = fm.init(jax.random.key(0))
    hyper = aa.attach(fm, params, X)
    # SelfAttention.__call__ calls MultiHeadDotProductAttention.__call__: one site.
    assert [s.name for s in hyper.sites] == ["SelfAttention_0"]
    hp = hyper.init(jax.random.key(1))
    np.testing.assert_array_equal(hyper.apply(hp, params, X), fm.apply(params, X))
    moved = hyper.apply(_perturbed(hp, jax.random.key(2)), params, X)
    assert not np.allclose(moved, fm.apply(params, X))


def test_normal_init_is_near_the_identity_and_dropout_is_random(linen):
    model, frozen, args = linen
    settings = attention.Settings(init="normal", dropout_rate=0.5)
    hyper = aa.attach(model, frozen, *args, settings=settings)
    hp = hyper.init(jax.random.key(0))
    expected = model.apply(frozen, *args)
    out = hyper.apply(hp, frozen, *args)
    assert 0 < float(jnp.abs(out - expected).max()) < 1e-2
    a = hyper.apply(hp, frozen, *args, hyper_rng=jax.random.key(1))
    b = hyper.apply(hp, frozen, *args, hyper_rng=jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, hyper.apply(hp, frozen, *args, hyper_rng=jax.random.key(1)))


def test_save_and_load_round_trip(tmp_path, text):
    model, params, args = text
    settings = attention.Settings((1, 0.5, 1), "tanh", layer_norm=True, shared=True, strength=0.5)
    hyper = aa.attach(model, params, *args, settings=settings)
    hp = _perturbed(hyper.init(jax.random.key(0)), jax.random.key(1))
    path = tmp_path / "hyper"
    size = attention.save(path, hp, settings)
    assert size == attention.size_bytes(path) and 0 < size < 100_000
    loaded, loaded_settings = attention.load(path)
    assert loaded_settings == settings
    jax.tree.map(np.testing.assert_array_equal, loaded, hp)
    np.testing.assert_array_equal(
        hyper.apply(loaded, params, *args), hyper.apply(hp, params, *args)
    )
    assert attention.save(path, loaded, settings) > 0  # its own file is replaced
    jax.tree.map(np.testing.assert_array_equal, attention.load(path)[0], hp)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an attention-hypernetwork file"):
        attention.save(other, hp, settings)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="not an attention-hypernetwork file"):
        attention.load(other)
    with pytest.raises(FileNotFoundError, match="no attention-hypernetwork file"):
        attention.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="must hold exactly"):
        attention.save(tmp_path / "bad", {"layer_001": {"key": 1}}, settings)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layer_structure": (1,)}, "layer_structure"),
        ({"layer_structure": (2, 1)}, "start and end with 1"),
        ({"layer_structure": (1, 0, 1)}, "layer_structure"),
        ({"layer_structure": (1, float("nan"), 1)}, "layer_structure"),
        ({"activation": "swishy"}, "Settings.activation"),
        ({"dropout_rate": 1.0}, "Settings.dropout_rate"),
        ({"init": "xavier"}, "Settings.init"),
        ({"layer_norm": 1}, "Settings.layer_norm"),
        ({"strength": float("inf")}, "Settings.strength"),
    ],
)
def test_bad_settings_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attention.Settings(**kwargs)


def test_bad_inputs_name_the_problem(linen, text):
    model, frozen, args = linen
    with pytest.raises(ValueError, match="unknown Settings field.*colour"):
        attention.Settings.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="model NoAttention has no attention layer"):
        aa.attach(NoAttention(), NoAttention().init(jax.random.key(0), X), X)
    base = mlp.MLP(input_shape=(4,), num_classes=3, widths=(8,))
    with pytest.raises(ValueError, match="model MLP has no attention layer"):
        aa.attach(base, base.init(jax.random.key(0)), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="Settings.shared.*block/self_attn.*block/cross_attn"):
        aa.attach(model, frozen, *args, settings=attention.Settings(shared=True))
    with pytest.raises(ValueError, match="width 0 for 6 features at block/cross_attn"):
        aa.attach(model, frozen, *args, settings=attention.Settings((1, 0.15, 1)))
    with pytest.raises(TypeError, match="settings must be"):
        aa.attach(model, frozen, *args, settings={"shared": True})
    hyper = aa.attach(model, frozen, *args)
    hp = hyper.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"missing \['block/cross_attn'\]"):
        hyper.apply({"block/self_attn": hp["block/self_attn"]}, frozen, *args)
    bad = {**hp, "block/cross_attn": hp["block/self_attn"]}
    with pytest.raises(ValueError, match=r"hyper_params\['block/cross_attn'\].*shape"):
        hyper.apply(bad, frozen, *args)
    text_model, params, text_args = text
    text_hyper = aa.attach(text_model, params, *text_args, settings=SMALL)
    with pytest.raises(ValueError, match="missing"):
        text_hyper.apply(hp, params, *text_args)
