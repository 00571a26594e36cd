"""Tests for uhn_jax.generator and uhn_jax.encodings."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax import generator
from uhn_jax.core import descriptors, encodings
from uhn_jax.generator import precision, separable

RANGES = descriptors.Ranges((0.0,) * 10, (100.0,) * 10)
S_RANGES = descriptors.Ranges((0.0,) * 29, (10.0,) * 29)


#: The exact, host-independent function. The defaults ("auto") pick bf16 first-layer matmuls on
#: CPUs with native bf16 and the non-uniform FFT for large groups where jax-finufft runs; the
#: tolerances below are for float32 matmuls unless a test sets these itself.
EXACT = {"matmul_dtype": "float32", "separable_method": "matmul"}


def _generator(**kw) -> generator.Generator:
    return generator.Generator(**{**EXACT, **kw})


def _index(n, seed=0):
    return jax.random.randint(jax.random.key(seed), (n, 10), 0, 100).astype(jnp.float32)


def test_reference_parameter_counts():
    # Spec §2.2: h=64, 2 blocks, 1024 freqs -> 148,353 without / 181,889 with structure.
    v = generator.init(generator.Generator(index_ranges=RANGES), jax.random.key(0))
    assert generator.num_params(v) == 148_353
    assert v["constants"]["index_B"].shape == (10, 1024)
    gen_s = generator.Generator(index_ranges=RANGES, structure_ranges=S_RANGES, structure=True)
    assert generator.num_params(generator.init(gen_s, jax.random.key(0))) == 181_889
    # The h=128 / 2048-frequency configuration: 591,617 / 641,665.
    big = generator.Generator(index_ranges=RANGES, hidden=128, n_freqs=2048)
    assert (
        generator.num_params(jax.eval_shape(lambda k: generator.init(big, k), jax.random.key(0)))
        == 591_617
    )


def test_module_defaults_are_the_config_defaults():
    """One set of defaults: a Generator built directly is the one a default config builds."""
    gen = generator.Generator(index_ranges=RANGES)
    cfg = generator.GeneratorConfig()
    shared = {f.name for f in dataclasses.fields(gen)} & {f.name for f in dataclasses.fields(cfg)}
    assert {"hidden", "n_freqs", "sigma", "matmul_dtype", "separable_method"} <= shared
    assert {name: getattr(gen, name) for name in shared} == {
        name: getattr(cfg, name) for name in shared
    }
    built = generator.from_config(cfg, RANGES)
    assert all(getattr(built, name) == getattr(gen, name) for name in shared)
    assert generator.GeneratorConfig is generator.settings.GeneratorConfig


def test_frozen_fourier_matrix_depends_on_seed_and_sigma():
    gen = _generator(index_ranges=RANGES, n_freqs=64)
    b0 = generator.init(gen, jax.random.key(0))["constants"]["index_B"]
    b1 = generator.init(gen, jax.random.key(1))["constants"]["index_B"]
    assert not np.allclose(b0, b1)
    assert 80 < float(jnp.std(b0)) < 120  # N(0, 1) * sigma=100


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_unchunked(chunk):
    gen = _generator(index_ranges=RANGES, hidden=32, n_freqs=128)
    v = generator.init(gen, jax.random.key(0))
    x = _index(500)
    full = generator.generate(gen, v, x)
    chunked = jax.jit(generator.generate, static_argnums=(0, 4))(gen, v, x, None, chunk)
    assert chunked.shape == (500,)
    # Fourier phases reach |x B| ~ 1e3, so float32 rounding differences between the two
    # compiled programs are amplified; 1e-4 of the output scale is that noise floor.
    np.testing.assert_allclose(chunked, full, atol=1e-4 * float(jnp.abs(full).max()), rtol=0)


def test_chunked_gradients_equal_unchunked():
    gen = _generator(index_ranges=RANGES, hidden=16, n_freqs=32)
    v = generator.init(gen, jax.random.key(0))
    x = _index(300)

    def loss(p, chunk):
        w = generator.generate(gen, {"params": p, "constants": v["constants"]}, x, None, chunk)
        return jnp.sum(w**2)

    g_full = jax.grad(loss)(v["params"], None)
    g_chunk = jax.grad(loss)(v["params"], 64)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_full), jax.tree_util.tree_leaves(g_chunk), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("structure", [False, True])
def test_gradients_reach_every_generator_leaf(structure):
    gen = _generator(
        index_ranges=RANGES,
        structure_ranges=S_RANGES,
        structure=structure,
        hidden=16,
        n_freqs=32,
        structure_freqs=8,
        structure_heads=2,
    )
    v = generator.init(gen, jax.random.key(0))
    s = jax.random.uniform(jax.random.key(3), (4, 29)) * 10
    # Zero-init of the structure output blocks gradients into the encoder at step 0, so take
    # the gradient at a point where it is nonzero, as after one optimiser step.
    params = jax.tree_util.tree_map(lambda p: p + 0.01, v["params"])

    def loss(p):
        w = generator.generate(gen, {"params": p, "constants": v["constants"]}, _index(200), s)
        return jnp.sum(jnp.sin(w))

    grads = jax.grad(loss)(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert float(jnp.abs(g).max()) > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_structure_path_starts_as_a_no_op():
    kw = dict(index_ranges=RANGES, hidden=16, n_freqs=32, structure_freqs=8, structure_heads=2)
    plain = _generator(**kw)
    with_s = _generator(**kw, structure_ranges=S_RANGES, structure=True)
    v_s = generator.init(with_s, jax.random.key(0))
    s = jax.random.uniform(jax.random.key(3), (4, 29)) * 10
    w_s = generator.generate(with_s, v_s, _index(50), s)
    v_plain = {
        "params": {k: v for k, v in v_s["params"].items() if k != "structure_encoder"},
        "constants": {"index_B": v_s["constants"]["index_B"]},
    }
    np.testing.assert_allclose(w_s, generator.generate(plain, v_plain, _index(50)), atol=1e-6)
    with pytest.raises(ValueError, match="structure_L29"):
        generator.generate(with_s, v_s, _index(5))


def test_generate_jits_once_per_shape():
    gen = _generator(index_ranges=RANGES, hidden=8, n_freqs=16)
    v = generator.init(gen, jax.random.key(0))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(v, x):
        return generator.generate(gen, v, x, chunk_size=32)

    for seed in range(3):
        f(v, _index(100, seed))


def test_encodings_shapes_and_values():
    x = jnp.asarray([[0.5, -1.0]])
    b = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(
        encodings.fourier(x, b), [[np.cos(0.5), np.cos(-2.0), np.sin(0.5), np.sin(-2.0)]], rtol=1e-6
    )
    assert encodings.positional(jnp.zeros((3, 10))).shape == (3, 640)
    for enc, dim in (("positional", 640), ("raw", 10)):
        gen = _generator(index_ranges=RANGES, encoding=enc, hidden=8)
        v = generator.init(gen, jax.random.key(0))
        assert v["params"]["input_layer"]["kernel"].shape == (dim, 8)
        assert generator.generate(gen, v, _index(4)).shape == (4,)
    with pytest.raises(ValueError, match="encoding"):
        generator.init(_generator(index_ranges=RANGES, encoding="onehot"), jax.random.key(0))


def test_bad_chunk_size():
    gen = _generator(index_ranges=RANGES, hidden=8, n_freqs=16)
    v = generator.init(gen, jax.random.key(0))
    with pytest.raises(ValueError, match="chunk_size"):
        generator.generate(gen, v, _index(10), chunk_size=-1)


def _model_desc(model):
    from uhn_jax.core import layouts

    layout = layouts.from_params(jax.eval_shape(model.init, jax.random.key(0)))
    return descriptors.build(layout, model.layers(), model.global_fields())


def _tiny_models():
    from uhn_jax.models.cnn import CNN
    from uhn_jax.models.mlp import MLP

    return {
        "mlp": MLP(input_shape=(6, 5), num_classes=3, widths=(8, 8)),
        "cnn": CNN(input_shape=(8, 8, 3), num_classes=3, depths=(1, 2), widths=(4, 8)),
    }


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("chunk", [None, 50])
@pytest.mark.parametrize("sigma", [100.0, 1.0])
def test_separable_path_equals_direct_generation(model_name, chunk, sigma):
    desc = _model_desc(_tiny_models()[model_name])
    gen = _generator(index_ranges=desc.index_ranges(), hidden=16, n_freqs=64, sigma=sigma)
    v = generator.init(gen, jax.random.key(0))
    plan, arrays = generator.plan(gen, desc, min_separable=16)
    assert sum(plan.separable) >= 2

    def loss(p, planned):
        vv = {"params": p, "constants": v["constants"]}
        if planned:
            w = generator.generate_planned(gen, vv, plan, arrays, chunk_size=chunk)
        else:
            w = generator.generate(gen, vv, desc.index)
        return jnp.sum(w**2), w

    g_ref, ref = jax.grad(loss, has_aux=True)(v["params"], False)
    g_sep, out = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)(v["params"], True)
    # At sigma=100 the Fourier phases reach ~1e3 and the two paths round them differently in
    # float32, so they agree only to that noise (gradients within 1.9 % of the largest entry
    # under the tests' XLA settings); at sigma=1 the identity is checked tightly.
    tol, gtol = (5e-4, 3e-2) if sigma > 1 else (1e-5, 2e-5)
    np.testing.assert_allclose(out, ref, atol=tol * float(jnp.abs(ref).max()), rtol=0)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_sep), strict=True
    ):
        np.testing.assert_allclose(b, a, rtol=0, atol=gtol * float(jnp.abs(a).max()))


def test_plan_falls_back_to_direct_without_fourier():
    from uhn_jax.models.mlp import MLP

    desc = _model_desc(MLP(input_shape=(6, 5), num_classes=3, widths=(8, 8)))
    gen = _generator(index_ranges=desc.index_ranges(), encoding="raw", hidden=8)
    plan, arrays = generator.plan(gen, desc, min_separable=16)
    assert not any(plan.separable) and arrays["direct"].shape == (desc.num_params, 10)


def _planned_loss(gen, v, plan, arrays, chunk=None, remat=True):
    def loss(p):
        vv = {"params": p, "constants": v["constants"]}
        w = generator.generate_planned(gen, vv, plan, arrays, chunk_size=chunk, remat=remat)
        return jnp.sum(jnp.sin(w)), w

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_bfloat16_matmuls_stay_close_to_float32(model_name):
    desc = _model_desc(_tiny_models()[model_name])
    out = {}
    for dtype in ("float32", "bfloat16"):
        gen = _generator(
            index_ranges=desc.index_ranges(), hidden=16, n_freqs=64, matmul_dtype=dtype
        )
        v = generator.init(gen, jax.random.key(0))
        plan, arrays = generator.plan(gen, desc, min_separable=16)
        (_, w), g = _planned_loss(gen, v, plan, arrays)(v["params"])
        w_direct = generator.generate(gen, v, desc.index)  # the direct path (nn.Dense) too
        grad_fn = _planned_loss(gen, v, plan, arrays)
        hlo = grad_fn.lower(v["params"]).as_text()
        out[dtype] = w, w_direct, g, hlo
    (w32, d32, g32, hlo32), (w16, d16, g16, hlo16) = out["float32"], out["bfloat16"]
    # Both first-layer GEMMs (forward and weight gradient) take bf16 operands.
    assert "bf16" not in hlo32 and hlo16.count("bf16") >= 4
    scale = float(jnp.abs(w32).max())
    assert 0 < float(jnp.abs(w16 - w32).max()) < 3e-2 * scale
    assert float(jnp.abs(d16 - d32).max()) < 3e-2 * scale
    # End to end, bf16 rounding of the first layer moves ReLU/LayerNorm inputs slightly, so the
    # gradient changes by a few percent in places; its direction stays.
    flat32, flat16 = (jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (g32, g16))
    cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
    assert float(cosine) > 0.99


def test_bfloat16_first_layer_gradients_match_float32():
    """The first-layer ops alone: bf16 operands, float32 accumulation, ~0.4 % relative error."""
    k = jax.random.split(jax.random.key(0), 5)
    f, r, c, h = 64, 8, 30, 16
    kernel = jax.random.normal(k[0], (2 * f, h))
    a_FR = jax.random.normal(k[1], (f, r)) * 100
    b_CF = jax.random.normal(k[2], (c, f)) * 100
    g_C2F = jnp.concatenate([jnp.cos(b_CF), jnp.sin(b_CF)], axis=1)
    ct = jax.random.normal(k[3], (c, r, h))
    feats = jax.random.normal(k[4], (50, 2 * f))

    def grads(dtype):
        dtype = jnp.dtype(dtype)
        sep = jax.grad(
            lambda w: jnp.sum(
                separable.separable_linear(w, jnp.cos(a_FR), jnp.sin(a_FR), g_C2F, dtype) * ct
            )
        )(kernel)
        mixed = jax.grad(lambda w: jnp.sum(precision.mixed_matmul(feats, w, dtype) ** 2))(kernel)
        return sep, mixed

    for ref, low in zip(grads("float32"), grads("bfloat16"), strict=True):
        rel = float(jnp.linalg.norm(low - ref) / jnp.linalg.norm(ref))
        assert 0 < rel < 1e-2, rel


def test_matmul_dtype_names():
    assert generator.resolve_matmul_dtype("float32") == jnp.float32
    assert generator.resolve_matmul_dtype("bfloat16") == jnp.bfloat16
    auto = generator.resolve_matmul_dtype("auto")
    fast = jax.default_backend() != "cpu" or precision.cpu_has_native_bf16()
    assert auto == (jnp.bfloat16 if fast else jnp.float32)
    with pytest.raises(ValueError, match="matmul_dtype must be one of"):
        generator.resolve_matmul_dtype("float16")


def test_auto_chunking_follows_the_budget():
    from uhn_jax.models.mlp import MLP

    desc = _model_desc(MLP(input_shape=(28, 28), num_classes=10, widths=(128, 128)))
    gen = _generator(index_ranges=desc.index_ranges())
    _, arrays = generator.plan(gen, desc, min_separable=1024)
    # The reference MNIST MLP fits one pass in 1 GiB: no chunking, no recomputation.
    assert generator.auto_chunking(gen, arrays, 1024) == (None, False)
    chunks = [generator.auto_chunking(gen, arrays, mib) for mib in (8, 64, 256)]
    assert all(c is not None for c, _ in chunks)
    assert [c for c, _ in chunks] == sorted(c for c, _ in chunks)  # more memory, bigger chunks
    assert chunks[0][1]  # a tight budget recomputes the first layer
    # More devices hold less each: the same budget allows a chunk at least as large.
    assert generator.auto_chunking(gen, arrays, 64, devices=8) == (None, False)
    assert generator.auto_chunking(gen, arrays, 8, devices=8)[0] > chunks[0][0]
    with pytest.raises(ValueError, match="budget"):
        generator.auto_chunking(gen, arrays, 0)


@pytest.mark.parametrize("remat", [True, False])
def test_chunked_planned_generation_with_and_without_remat(remat):
    desc = _model_desc(_tiny_models()["cnn"])
    gen = _generator(index_ranges=desc.index_ranges(), hidden=16, n_freqs=64, sigma=1.0)
    v = generator.init(gen, jax.random.key(0))
    plan, arrays = generator.plan(gen, desc, min_separable=16)
    (_, w_ref), g_ref = _planned_loss(gen, v, plan, arrays)(v["params"])
    (_, w), g = _planned_loss(gen, v, plan, arrays, chunk=40, remat=remat)(v["params"])
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-5 * float(jnp.abs(w_ref).max()))
    for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5 * float(jnp.abs(a).max()))


def test_precomputed_tables_give_the_same_weights_without_cos():
    desc = _model_desc(_tiny_models()["mlp"])
    gen = _generator(index_ranges=desc.index_ranges(), hidden=16, n_freqs=64)
    v = generator.init(gen, jax.random.key(0))
    plan, arrays = generator.plan(gen, desc, min_separable=16)
    with_tabs = jax.jit(generator.with_tables, static_argnums=0)(gen, v, arrays)
    assert [t.shape for t in with_tabs["row_tables"]] == [(r.shape[0], 128) for r in arrays["rows"]]

    def gen_w(a):
        return generator.generate_planned(gen, v, plan, a)

    # The same function; fusing the features into the step may round differently.
    w_ref = jax.jit(gen_w)(arrays)
    np.testing.assert_allclose(
        jax.jit(gen_w)(with_tabs), w_ref, rtol=0, atol=1e-6 * float(jnp.abs(w_ref).max())
    )
    # With the tables and the direct features given, generation evaluates no cos at all.
    assert with_tabs["direct_features"].shape == (arrays["direct"].shape[0], 128)
    assert str(jax.make_jaxpr(gen_w)(with_tabs)).count(" cos ") == 0
    # Without them, generation computes them itself: the cos of with_tables, every call.
    tables_cos = str(jax.make_jaxpr(lambda a: generator.with_tables(gen, v, a))(arrays))
    assert str(jax.make_jaxpr(gen_w)(arrays)).count(" cos ") == tables_cos.count(" cos ") > 0
    # Direct features above the cache size stay on the per-step path.
    big = dict(arrays, direct=np.zeros((generator.DIRECT_FEATURE_CACHE_BYTES // 512 + 1, 10)))
    assert "direct_features" not in jax.eval_shape(lambda a: generator.with_tables(gen, v, a), big)


def _nufft_pair(model, sigma, **kw):
    desc = _model_desc(model)
    gens = {
        m: _generator(
            index_ranges=desc.index_ranges(),
            hidden=16,
            n_freqs=64,
            sigma=sigma,
            separable_method=m,
            **kw,
        )
        for m in ("matmul", "nufft")
    }
    v = generator.init(gens["matmul"], jax.random.key(0))
    plan, arrays = generator.plan(gens["nufft"], desc, min_separable=16)
    return gens, v, plan, arrays


def _planned_grad(v, plan, arrays):
    """Jitted ``(gen, params) -> (grads, w)`` of ``sum(sin(3 w))`` over unchunked generation
    (``gen`` static, so one function serves generators that differ in their first layer)."""

    def loss(p, gen):
        w = generator.generate_planned(
            gen, {"params": p, "constants": v["constants"]}, plan, arrays
        )
        return jnp.sum(jnp.sin(3 * w)), w

    return jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("sigma", [100.0, 1.0])
def test_nufft_first_layer_equals_matmul(model_name, sigma):
    """The non-uniform FFT evaluates the same first layer as the matmul, weights and gradients.

    The CNN's kernel positions exercise the phases of the column axes before the input index.
    FINUFFT at upsampling 1.25 in float32 reaches ~3e-4 relative error; bf16 matmuls ~4e-3.
    """
    models = _tiny_models()
    if model_name == "mlp":  # one tensor large enough for a 2-D grid of many points
        from uhn_jax.models.mlp import MLP

        models["mlp"] = MLP(input_shape=(12, 10), num_classes=3, widths=(40,))
    gens, v, plan, arrays = _nufft_pair(models[model_name], sigma)
    nufft = generator.use_nufft(gens["nufft"], plan, None)
    assert any(nufft) and nufft == plan.linear
    assert not any(generator.use_nufft(gens["matmul"], plan, None))
    grad = _planned_grad(v, plan, arrays)
    g_ref, ref = grad(v["params"], gens["matmul"])
    g_nu, out = grad(v["params"], gens["nufft"])
    err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
    gerr = max(
        float(jnp.abs(b - a).max() / jnp.abs(a).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_nu), strict=True
        )
    )
    # FINUFFT in float32 at upsampling 1.25 (tolerance relative to the sum of |strengths|): here
    # 3e-4 (sigma=1) and 1.5e-3 (sigma=100) of the largest weight, 2e-3 and 1.5e-2 of the
    # largest gradient entry; bf16 matmuls differ by up to 3e-2
    # (test_bfloat16_matmuls_stay_close_to_float32).
    tol, gtol = (5e-3, 5e-2) if sigma > 1 else (1e-3, 5e-3)
    assert 0 < err < tol  # a different computation, not the matmul again
    assert gerr < gtol


@pytest.mark.parametrize("remat", [True, False])
def test_chunked_nufft_equals_one_pass(remat):
    """Row chunks of the transform (a phase shift of the first row) give the one-pass weights."""
    from uhn_jax.models.mlp import MLP

    model = MLP(input_shape=(12, 10), num_classes=3, widths=(40,))
    gens, v, plan, arrays = _nufft_pair(model, 100.0)

    def loss(p, chunk):
        w = generator.generate_planned(
            gens["nufft"],
            {"params": p, "constants": v["constants"]},
            plan,
            arrays,
            chunk_size=chunk,
            remat=remat,
        )
        return jnp.sum(jnp.sin(3 * w)), w

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g_one, w_one = grad(v["params"], None)
    g_chunk, w_chunk = grad(v["params"], 7 * 120)  # 7 of a 40-row tensor's rows: 6 chunks, padded
    # Different grids (7 x 120 against 40 x 120) carry FINUFFT's float32 error differently: the
    # same bounds as test_nufft_first_layer_equals_matmul at sigma=100.
    scale = float(jnp.abs(w_one).max())
    np.testing.assert_allclose(w_chunk, w_one, rtol=0, atol=5e-3 * scale)
    leaves = zip(jax.tree_util.tree_leaves(g_one), jax.tree_util.tree_leaves(g_chunk), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(b, a, rtol=0, atol=5e-2 * float(jnp.abs(a).max()))


def test_one_pass_mixes_transform_and_matmul_groups():
    """Unchunked generation with one group on the transform and one on the matmul (its column
    index clipped, so not affine): the matmul and direct tensors share one residual-block loop,
    the transform's group keeps its own, and the weights and gradients are the all-matmul ones."""
    from uhn_jax.models.mlp import MLP

    desc = _model_desc(MLP(input_shape=(12, 10), num_classes=3, widths=(40,)))
    r = desc.index_ranges()
    # Index values up to 50: the 120-input weight's columns are clipped, the 40-input one's not.
    narrow = descriptors.Ranges(r.lo, tuple(min(h, 50.0) for h in r.hi))
    gens = {
        m: _generator(
            index_ranges=narrow, hidden=16, n_freqs=64, out_of_range="clip", separable_method=m
        )
        for m in ("matmul", "nufft")
    }
    v = generator.init(gens["matmul"], jax.random.key(0))
    plan, arrays = generator.plan(gens["nufft"], desc, min_separable=16)
    assert generator.use_nufft(gens["nufft"], plan, None) == plan.linear == (False, True)
    assert not all(plan.separable)  # biases: the direct path
    grad = _planned_grad(v, plan, arrays)
    g_ref, ref = grad(v["params"], gens["matmul"])
    g_mix, out = grad(v["params"], gens["nufft"])
    scale = float(jnp.abs(ref).max())
    np.testing.assert_allclose(out, ref, rtol=0, atol=5e-3 * scale)  # FINUFFT float32, sigma=100
    assert float(jnp.abs(out - ref).max()) > 0  # the transform ran
    leaves = zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_mix), strict=True)
    for a, b in leaves:
        np.testing.assert_allclose(b, a, rtol=0, atol=5e-2 * float(jnp.abs(a).max()))
    # Against the reference generator (no plan): the same weights from the matmul path.
    w_direct = generator.generate(gens["matmul"], v, jnp.asarray(desc.index))
    np.testing.assert_allclose(ref, w_direct, rtol=0, atol=1e-4 * scale)


def test_nufft_only_for_affine_groups():
    from uhn_jax.models.mlp import MLP

    model = MLP(input_shape=(12, 10), num_classes=3, widths=(40,))
    gens, v, plan, arrays = _nufft_pair(model, 100.0)
    auto = dataclasses.replace(gens["nufft"], separable_method="auto")
    # auto skips grids below NUFFT_MIN_GRID (rows per chunk x inputs); "nufft" takes them.
    assert not any(generator.use_nufft(auto, plan, None))
    assert any(generator.use_nufft(gens["nufft"], plan, 64))
    # Clipped index values break the affine form: those groups keep the matmul.
    desc = _model_desc(model)
    r = desc.index_ranges()
    narrow = descriptors.Ranges(r.lo, tuple(min(h, 20.0) for h in r.hi))
    clipped = _generator(
        index_ranges=narrow, hidden=16, n_freqs=64, out_of_range="clip", separable_method="nufft"
    )
    plan_c, _ = generator.plan(clipped, desc, min_separable=16)
    assert plan_c.groups and not any(plan_c.linear)
    with pytest.raises(ValueError, match="separable_method"):
        generator.init(_generator(index_ranges=r, separable_method="fft"), jax.random.key(0))
