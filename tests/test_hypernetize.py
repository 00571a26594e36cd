"""Tests for hypernetize and the Flax adapters (uhn_jax.models.hypernetize, flax_adapter)."""

import dataclasses
import functools
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from uhn_jax import config, generator
from uhn_jax import models as base_models
from uhn_jax.core import descriptors, layouts, roles
from uhn_jax.data import images
from uhn_jax.models.flax_adapter import FlaxModel
from uhn_jax.models.hypernetize import hypernetize

GEN = config.GeneratorConfig(hidden=16, n_freqs=16, matmul_dtype="float32")
TOK = jnp.asarray([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], jnp.int32)
IMG = jnp.linspace(-1, 1, 2 * 6 * 6 * 2).reshape(2, 6, 6, 2)

# ----------------------------------------------------------------------------- Linen model


class Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(8, param_dtype=jnp.bfloat16)(x)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return Inner()(nn.LayerNorm()(x))


class LinenNet(nn.Module):
    """Embed + attention + grouped conv + Dense, then a submodule nested two deep."""

    @nn.compact
    def __call__(self, tok, img):
        a = nn.MultiHeadDotProductAttention(num_heads=2)(nn.Embed(11, 8)(tok))
        c = nn.Conv(4, (3, 3), feature_group_count=2)(img)
        return Block()(a.mean(1) + nn.Dense(8)(c.mean((1, 2))))


# ----------------------------------------------------------------------------- NNX model


class NnxInner(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(8, 8, param_dtype=jnp.bfloat16, rngs=rngs)

    def __call__(self, x):
        return self.dense(x)


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.inner = NnxInner(rngs)

    def __call__(self, x):
        return self.inner(self.norm(x))


class NnxNet(nnx.Module):
    """The Linen model's shape, plus BatchNorm statistics and a dropout RNG stream."""

    def __init__(self, rngs):
        self.embed = nnx.Embed(11, 8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs)
        self.conv = nnx.Conv(2, 4, (3, 3), feature_group_count=2, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.block = NnxBlock(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, tok, img):
        a = self.attn(self.embed(tok)).mean(1)
        return self.drop(self.block(a + self.dense(self.bn(self.conv(img)).mean((1, 2)))))


def _shapes(tree):
    return jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


def _check_gradients_reach_every_generator_param(hyper, variables, loss):
    grads = jax.jit(jax.grad(loss, allow_int=True))(variables)
    flat = jax.tree_util.tree_flatten_with_path(grads["generator"])[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g) != 0)]
    assert flat and not dead, f"no gradient reaches {dead}"
    return grads


def test_linen_every_leaf_generated_with_its_shape_and_dtype():
    module = LinenNet()
    hyper = hypernetize(module, (TOK, IMG), generator_config=GEN)
    variables = jax.jit(hyper.init)(jax.random.key(1))
    assert variables["direct"] == {} and variables["state"] == {}
    full = jax.jit(hyper.target_variables)(variables)
    reference = module.init(jax.random.key(0), TOK, IMG)
    assert _shapes(full) == _shapes(reference)  # bf16 Dense included
    assert full["params"]["Block_0"]["Inner_0"]["Dense_0"]["kernel"].dtype == jnp.bfloat16
    kinds = {s.name: descriptors.kind_name(s.layer_type) for s in hyper.model.layers()}
    assert kinds == {
        "Block_0/Inner_0/Dense_0": "linear",
        "Block_0/LayerNorm_0": "norm",
        "Conv_0": "conv",
        "Dense_0": "linear",
        "Embed_0": "embedding",
        **{f"MultiHeadDotProductAttention_0/{p}": "mha" for p in ("key", "out", "query", "value")},
    }
    out = jax.jit(hyper.apply)(variables, TOK, IMG)
    np.testing.assert_allclose(out, module.apply(full, TOK, IMG), rtol=1e-5, atol=1e-5)

    def loss(v):
        return jnp.sum(hyper.apply(v, TOK, IMG) ** 2)

    _check_gradients_reach_every_generator_param(hyper, variables, loss)


def test_folded_attention_kernels_generate_the_same_on_the_separable_path():
    # (E, heads, head_dim) kernels are (E, heads * head_dim) grids; the generator's separable
    # path (rows = last grid axis) must give the weights its direct path gives. sigma=1: at
    # large sigma the two paths round the Fourier phases differently (see test_generator).
    cfg = dataclasses.replace(GEN, sigma=1.0)
    hyper = hypernetize(LinenNet(), (TOK, IMG), generator_config=cfg)
    gen_vars = generator.init(hyper.gen, jax.random.key(1))
    plan_, arrays = generator.plan(hyper.gen, hyper.desc, min_separable=1)
    leaves = hyper.desc.layout.leaves
    folded = [g for g, leaf in zip(hyper.desc.grids, leaves, strict=True) if g.shape != leaf.shape]
    assert len(folded) == 7  # q, k, v kernels and biases, the out kernel
    assert sum(plan_.separable) == sum(len(g.shape) >= 2 for g in hyper.desc.grids) >= 5
    planned = jax.jit(lambda v: generator.generate_planned(hyper.gen, v, plan_, arrays))(gen_vars)
    direct = jax.jit(lambda v: generator.generate(hyper.gen, v, hyper.desc.index))(gen_vars)
    np.testing.assert_allclose(planned, direct, rtol=0, atol=1e-5 * float(jnp.abs(direct).max()))


def test_nnx_every_leaf_generated_and_other_variables_stay_state():
    module = NnxNet(nnx.Rngs(0, dropout=1))
    hyper = hypernetize(module, generator_config=GEN)
    variables = jax.jit(hyper.init)(jax.random.key(1))
    assert variables["direct"] == {}
    assert set(variables["state"]) == {"bn", "drop"}  # BatchStat and the RNG stream
    assert set(variables["state"]["bn"]) == {"mean", "var"}
    full = jax.jit(hyper.target_variables)(variables)
    reference = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert _shapes(full["params"]) == _shapes(reference)
    assert full["params"]["block"]["inner"]["dense"]["kernel"].dtype == jnp.bfloat16
    assert {descriptors.kind_name(s.layer_type) for s in hyper.model.layers()} == {
        "linear",
        "norm",
        "conv",
        "embedding",
        "mha",
    }
    out = jax.jit(lambda v: hyper.apply(v, TOK, IMG, train=False))(variables)
    rebuilt = hyper.model.to_nnx(full["params"], full["state"])
    rebuilt.eval()
    np.testing.assert_allclose(out, rebuilt(TOK, IMG), rtol=1e-5, atol=1e-5)

    # Training mode: dropout from the given key, BatchNorm statistics returned as new state.
    def train(v, key):
        return hyper.apply(v, TOK, IMG, train=True, rngs={"dropout": key}, mutable=True)

    out_a, state = jax.jit(train)(variables, jax.random.key(2))
    out_b, _ = jax.jit(train)(variables, jax.random.key(3))
    assert np.any(np.asarray(out_a) == 0) and not np.allclose(out_a, out_b)
    assert not np.allclose(state["bn"]["mean"], variables["state"]["bn"]["mean"])

    def loss(v):
        return jnp.sum(hyper.apply(v, TOK, IMG, train=False) ** 2)

    grads = _check_gradients_reach_every_generator_param(hyper, variables, loss)
    # Integer and key state (the RNG stream) passes through the optimiser untouched.
    tx = hyper.optimizer(optax.adam(1e-2))
    updates, _ = jax.jit(tx.update)(grads, tx.init(variables), variables)
    new = hyper.apply_updates(variables, updates)
    assert new["state"] is variables["state"]
    assert not np.allclose(jax.jit(loss)(new), jax.jit(loss)(variables))


def test_nnx_split_form_and_unsupported_variable_types():
    module = NnxNet(nnx.Rngs(0, dropout=1))
    from_split = FlaxModel.from_nnx(nnx.split(module))
    assert from_split == FlaxModel.from_nnx(module) and hash(from_split)

    class Counter(nnx.Variable):
        pass

    module.block.steps = Counter(jnp.zeros((), jnp.float32))
    with pytest.raises(ValueError, match=r"NNX variable block/steps \(Counter\).*state_types"):
        hypernetize(module, generator_config=GEN)
    model = FlaxModel.from_nnx(module, state_types=(Counter,))
    assert "steps" in model.init_variables(None)["state"]["block"]


def test_select_generates_only_the_convolutions():
    module = LinenNet()
    hyper = hypernetize(
        module, (TOK, IMG), select=lambda path: path[0].startswith("Conv"), generator_config=GEN
    )
    assert hyper.model.generated == {("Conv_0", "kernel"), ("Conv_0", "bias")}
    assert [s.name for s in hyper.model.layers()] == ["Conv_0"]
    assert hyper.desc.num_params == 3 * 3 * 1 * 4 + 4
    variables = jax.jit(hyper.init)(jax.random.key(1))
    assert "Conv_0" not in variables["direct"] and "Embed_0" in variables["direct"]
    labels = hyper.labels(variables)
    assert set(jax.tree_util.tree_leaves(labels["direct"])) == {"direct"}
    assert set(jax.tree_util.tree_leaves(labels["generator"])) == {"generator"}
    assert set(jax.tree_util.tree_leaves(labels["generator_constants"])) == {"frozen"}
    # The direct leaves are the module's own init; the conv is generated.
    base = module.init({"params": jax.random.split(jax.random.key(1))[1]}, TOK, IMG)["params"]
    params = jax.jit(hyper.target_variables)(variables)["params"]
    np.testing.assert_array_equal(params["Dense_0"]["kernel"], base["Dense_0"]["kernel"])
    assert not np.allclose(params["Conv_0"]["kernel"], base["Conv_0"]["kernel"])

    def loss(v):
        return jnp.sum(hyper.apply(v, TOK, IMG) ** 2)

    tx = hyper.optimizer(optax.sgd(0.1), optax.sgd(0.01))

    @jax.jit
    def step(v):
        updates, _ = tx.update(jax.grad(loss)(v), tx.init(v), v)
        return optax.apply_updates(v, updates)

    new = step(variables)
    for k, changed in [("generator", True), ("direct", True), ("generator_constants", False)]:
        same = jax.tree_util.tree_map(np.array_equal, new[k], variables[k])
        assert all(jax.tree_util.tree_leaves(same)) != changed, k


def test_flax_model_is_a_base_model_and_a_static_argument():
    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x))

    x = jnp.ones((3, 5))
    model = FlaxModel.from_linen(Drop(), x, train=False)
    params = model.init(jax.random.key(0))
    layout = layouts.from_params(jax.eval_shape(lambda: model.split(params)[0]))
    desc = descriptors.build(layout, model.layers(), model.global_fields())
    assert desc is model.build_descriptors() and desc.num_params == 24
    np.testing.assert_array_equal(model.apply(params, x), x @ params["Dense_0"]["kernel"])
    dropped = model.apply(params, x, train=True, rng=jax.random.key(1))
    assert np.any(np.asarray(dropped) == 0) and np.any(np.asarray(dropped) != 0)
    assert model.merge(*model.split(params)) == params

    # Given variables, they are the initial values; the input only finds the module classes.
    given = {"params": jax.tree_util.tree_map(lambda a: a + 1, params)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_vars = FlaxModel.from_linen(Drop(), x, variables=given, train=False)
    (spec,) = from_vars.layers()
    (ref,) = model.layers()
    assert (spec.name, spec.layer_type, spec.fields) == (ref.name, ref.layer_type, ref.fields)
    assert dict(spec.roles)["bias"].target == (1.0, 0.0)  # the given values' statistics
    chex.assert_trees_all_equal(from_vars.init(jax.random.key(5)), given["params"])
    with pytest.warns(UserWarning, match="Dense_0/bias"):  # no module known: generic
        FlaxModel.from_linen(Drop(), given)

    traces = []

    @functools.partial(jax.jit, static_argnums=2)
    def run(params, x, m):
        traces.append(m)
        return m.apply(params, x)

    twin = FlaxModel.from_linen(Drop(), x, train=False)
    assert twin == model and hash(twin) == hash(model)
    run(params, x, model)
    run(params, x + 1, twin)
    assert len(traces) == 1  # an equal model is the same static argument: no retrace


class Gate(nn.Module):
    """A module the library knows nothing about, with one extra parameter."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(x) * self.param("gate", nn.initializers.ones, (4,))


def test_user_describer_changes_its_leaf_and_generic_fallback_warns():
    x = jnp.ones((2, 3))
    with pytest.warns(UserWarning, match=r"\['gate'\]"):
        before = hypernetize(Gate(), x, generator_config=GEN)
    grid = {g.keys: g for g in before.desc.grids}[("gate",)]
    assert grid.const[1] == roles.GENERIC and grid.target == (1.0, 0.0)

    def gate(info):
        return roles.Description("test_gate", 0, ("output_idx",), {"output_size": 4}, (1.0, 0.2))

    roles.register(Gate, "gate", gate)
    try:
        after = hypernetize(Gate(), x, generator_config=GEN)
    finally:
        roles.unregister(gate)
    grid = {g.keys: g for g in after.desc.grids}[("gate",)]
    assert descriptors.kind_name(grid.const[1]) == "test_gate" and grid.target == (1.0, 0.2)


def test_errors_before_compilation():
    class Deep(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x * self.param("deep", nn.initializers.ones, (1,) * 8).sum()

    with pytest.raises(ValueError, match="params leaf deep has 8 axes"):
        hypernetize(Deep(), jnp.ones(2), generator_config=GEN)
    with pytest.raises(ValueError, match="select chose none of the 17 params leaves"):
        hypernetize(LinenNet(), (TOK, IMG), select=lambda p: False, generator_config=GEN)
    with pytest.raises(ValueError, match="example input or the module's variables"):
        hypernetize(LinenNet())


def test_flax_mlp_has_the_library_mlps_index_descriptors():
    # The same Linear layers through the Flax path: identical index descriptors.
    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(5, name="layer_000")(x.reshape(x.shape[0], -1))
            return nn.Dense(4, name="layer_001")(x)

    library = base_models.MLP(input_shape=(2, 3), num_classes=4, widths=(5,))
    layout = layouts.from_params(jax.eval_shape(library.init, jax.random.key(0)))
    expected = descriptors.build(layout, library.layers(), library.global_fields())
    flax_desc = FlaxModel.from_linen(LinenMLP(), jnp.ones((1, 2, 3))).build_descriptors()
    np.testing.assert_array_equal(flax_desc.index, expected.index)
    assert [g.shape for g in flax_desc.grids] == [g.shape for g in expected.grids]


class DigitsMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def _train_digits(init_steps: int = 50, steps: int = 300) -> tuple[float, float]:
    """A user-style loop: jit, optax.multi_transform, a short moment-matching stage, then
    cross-entropy. Returns (init loss after the first stage, test accuracy)."""
    data = images.load_digits()
    cfg = config.GeneratorConfig(hidden=32, n_freqs=64, matmul_dtype="float32")
    hyper = hypernetize(DigitsMLP(), data.x_train[:2], generator_config=cfg)
    variables = jax.jit(hyper.init)(jax.random.key(0))

    def task_loss(v, x, y):
        logits = hyper.apply(v, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def make_step(loss, tx):
        @jax.jit
        def step(v, opt_state, *batch):
            value, grads = jax.value_and_grad(loss)(v, *batch)
            updates, opt_state = tx.update(grads, opt_state, v)
            return optax.apply_updates(v, updates), opt_state, value

        return step

    init_tx = hyper.optimizer(optax.adam(1e-3))
    init_step, opt_state = make_step(hyper.init_loss, init_tx), init_tx.init(variables)
    for _ in range(init_steps):
        variables, opt_state, _ = init_step(variables, opt_state)
    init_loss = float(jax.jit(hyper.init_loss)(variables))

    tx = hyper.optimizer(optax.adam(3e-3))
    step, opt_state = make_step(task_loss, tx), tx.init(variables)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        idx = rng.integers(0, len(data.x_train), 128)
        variables, opt_state, _ = step(variables, opt_state, data.x_train[idx], data.y_train[idx])
    logits = jax.jit(hyper.apply)(variables, data.x_test)
    return init_loss, float(np.mean(np.argmax(logits, -1) == data.y_test))


@pytest.mark.slow
def test_hypernetized_linen_mlp_learns_digits():
    init_loss, accuracy = _train_digits()
    assert init_loss < 1e-2  # the generated tensors match their own Flax initialisers' moments
    assert accuracy > 0.9, accuracy
