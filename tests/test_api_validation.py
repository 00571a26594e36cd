"""Bad input at the public API (issue 28, "The Python API"): each row is one clear error that
names the argument, the value and what is allowed, raised before any compilation."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIG_DIR

from uhn_jax import generator
from uhn_jax.core import descriptors
from uhn_jax.data import images
from uhn_jax.models.cnn import CNN
from uhn_jax.models.mlp import MLP

RANGES = descriptors.Ranges((0.0,) * 10, (100.0,) * 10)
EXACT = {"matmul_dtype": "float32", "separable_method": "matmul"}


def _generator(**kw) -> generator.Generator:
    return generator.Generator(
        **{"index_ranges": RANGES, "hidden": 8, "n_freqs": 16, **EXACT, **kw}
    )


@pytest.fixture(scope="module")
def gen_and_vars():
    gen = _generator()
    return gen, generator.init(gen, jax.random.key(0))


def _index(n=40, seed=1):
    return jax.random.randint(jax.random.key(seed), (n, 10), 0, 100).astype(jnp.float32)


def _unchecked(gen, v, x, chunk_size=None):
    """What ``generate`` computed before it checked its arguments."""
    plan = generator.Plan(shapes=((x.shape[0],),), separable=(False,))
    arrays = {"direct": x, "rows": [], "cols": []}
    return generator.generate_planned(gen, v, plan, arrays, chunk_size=chunk_size)


# ----------------------------------------------------------------------------- descriptors


@pytest.mark.parametrize("chunk", [None, 16])
def test_in_range_descriptors_generate_the_same_weights_as_before(gen_and_vars, chunk):
    gen, v = gen_and_vars
    x = _index()
    np.testing.assert_array_equal(
        generator.generate(gen, v, x, chunk_size=chunk), _unchecked(gen, v, x, chunk)
    )


def test_out_of_range_descriptors_raise_by_default(gen_and_vars):
    gen, v = gen_and_vars
    x = _index().at[3, 4].set(250.0)
    with pytest.raises(ValueError, match=r"index_N10: .*'input_idx'.*250.*\[0, 100\].*clip"):
        generator.generate(gen, v, x)


def test_clip_mode_clamps_to_the_declared_ranges(gen_and_vars):
    gen, v = gen_and_vars
    x = _index() * 3 - 50  # both sides of [0, 100]
    w = generator.generate(gen, v, x, out_of_range="clip")
    np.testing.assert_array_equal(w, generator.generate(gen, v, jnp.clip(x, 0.0, 100.0)))
    assert not np.array_equal(w, _unchecked(gen, v, x))  # the unclamped weights differ
    with pytest.raises(ValueError, match="out_of_range must be one of"):
        generator.generate(gen, v, x, out_of_range="raise")


def test_traced_descriptors_skip_the_value_checks(gen_and_vars):
    gen, v = gen_and_vars
    x = _index() * 3  # out of range, but inside jit only shapes and dtypes are checked
    w = jax.jit(lambda v, x: generator.generate(gen, v, x))(v, x)
    np.testing.assert_allclose(w, _unchecked(gen, v, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bool_, jnp.uint8, jnp.complex64])
def test_descriptor_dtypes_that_are_not_real_signed_numbers(gen_and_vars, dtype):
    gen, v = gen_and_vars
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=f"index_N10 must be a float or signed int.*dtype {name}"):
        generator.generate(gen, v, _index().astype(dtype))


def test_nan_descriptor(gen_and_vars):
    gen, v = gen_and_vars
    with pytest.raises(ValueError, match=r"index_N10 must be finite.*index \(2, 0\)"):
        generator.generate(gen, v, _index().at[2, 0].set(jnp.nan))


def test_flat_index_names_the_expected_shape(gen_and_vars):
    gen, v = gen_and_vars
    with pytest.raises(
        ValueError, match=r"index_N10 must have shape \(N, 10\), got shape \(400,\)"
    ):
        generator.generate(gen, v, _index().reshape(-1))


def test_structure_input_is_checked_too():
    s_ranges = descriptors.Ranges((0.0,) * 29, (10.0,) * 29)
    kw = {"structure_ranges": s_ranges, "structure_freqs": 4, "structure_heads": 2}
    gen = _generator(structure=True, **kw)
    v = generator.init(gen, jax.random.key(0))
    with pytest.raises(ValueError, match=r"structure_L29 must have shape \(L, 29\)"):
        generator.generate(gen, v, _index(), jnp.zeros((3, 21)))
    bad = jnp.zeros((3, 29)).at[:, len(descriptors.GLOBAL_FIELDS) + 1].set(11.0)
    with pytest.raises(ValueError, match=r"structure_L29: .*'layer_type'.*\[11, 11\].*\[0, 10\]"):
        generator.generate(gen, v, _index(), bad)


# ----------------------------------------------------------------------------- variables


@pytest.mark.parametrize(
    "other, leaf",
    [({"n_freqs": 32}, r"\['constants'\]\['index_B'\] has shape \(10, 32\).*\(10, 16\)"),
     ({"hidden": 16}, r"\['blocks_0'\]\['Dense_0'\]\['bias'\] has shape \(16,\).*\(8,\)"),
     ({"num_blocks": 3}, r"\['params'\]\['blocks_2'\].* is not a variable")],
)  # fmt: skip
def test_variables_of_a_generator_of_another_size(gen_and_vars, other, leaf):
    gen, _ = gen_and_vars
    v_other = generator.init(_generator(**other), jax.random.key(0))
    with pytest.raises(ValueError, match=r"variables.*" + leaf):
        generator.generate(gen, v_other, _index())


def test_missing_variable_collection(gen_and_vars):
    gen, v = gen_and_vars
    with pytest.raises(ValueError, match=r"variables\['constants'\]\['index_B'\] is missing"):
        generator.generate(gen, {"params": v["params"]}, _index())


# ----------------------------------------------------------------------------- chunk size


def test_chunk_size_zero_is_automatic_as_in_the_config(gen_and_vars):
    gen, v = gen_and_vars
    x = _index()
    # The default budget (GeneratorConfig.memory_mib) fits this in one pass: the unchunked path.
    assert generator.auto_chunking(gen, {"direct": x, "rows": [], "cols": []}, 1024) == (
        None,
        False,
    )
    np.testing.assert_array_equal(
        generator.generate(gen, v, x, chunk_size=0), _unchecked(gen, v, x)
    )
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=r"chunk_size must be an int >= 0 or None"):
            generator.generate(gen, v, x, chunk_size=bad)


# ----------------------------------------------------------------------------- constructors


@pytest.mark.parametrize(
    "build, name",
    [(lambda: _generator(n_freqs=0), "Generator.n_freqs"),
     (lambda: _generator(hidden=-3), "Generator.hidden"),
     (lambda: _generator(sigma=0.0), "Generator.sigma"),
     (lambda: _generator(structure=True), "structure_ranges"),
     (lambda: MLP(input_shape=(0,), num_classes=3), "MLP input_shape"),
     (lambda: CNN(input_shape=(8, 0, 3), num_classes=3), "CNN input_shape"),
     (lambda: descriptors.LayerSpec("fc", descriptors.LayerType.LINEAR, (("output_size", 3),)),
      "layer 'fc' of kind 'linear' needs the structure field 'input_size' > 0, which is missing"),
     (lambda: descriptors.LayerSpec("conv", descriptors.LayerType.CONV, (("input_size", 0),)),
      "'input_size' > 0, got 0")],
)  # fmt: skip
def test_constructor_arguments(build, name):
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_a_layer_spec_with_explicit_roles_needs_no_fields():
    role = descriptors.TensorRole(0, ("input_idx", "output_idx"), (0.0, 1.0))
    spec = descriptors.LayerSpec("fc", descriptors.LayerType.LINEAR, roles=(("kernel", role),))
    assert dict(spec.roles) == {"kernel": role}


# ----------------------------------------------------------------------------- models and data


def test_model_inputs_of_the_wrong_shape():
    mlp = MLP(input_shape=(6, 5), num_classes=3, widths=(8,))
    p = mlp.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 5))
    np.testing.assert_array_equal(mlp.apply(p, x.reshape(2, 30)), mlp.apply(p, x))  # flattened
    with pytest.raises(ValueError, match=r"MLP .*input_shape=\(6, 5\).*got shape \(2, 7, 5\)"):
        mlp.apply(p, jnp.ones((2, 7, 5)))
    cnn = CNN(input_shape=(8, 8), num_classes=3, depths=(1,), widths=(4,))
    pc = cnn.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8))
    np.testing.assert_array_equal(cnn.apply(pc, x[..., None]), cnn.apply(pc, x))  # one channel
    with pytest.raises(ValueError, match=r"CNN .*input_shape=\(8, 8\).*got shape \(2, 8, 8, 3\)"):
        cnn.apply(pc, jnp.ones((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="input_shape"):  # also when traced: shapes are static
        jax.jit(mlp.apply)(p, jnp.ones((2, 31)))


def test_array_dataset_with_nan_inputs():
    x = np.zeros((4, 3), np.float32)
    x[1, 2] = np.nan
    y = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"toy: x_test must be finite.*index \(1, 2\)"):
        images.ArrayDataset("toy", np.zeros_like(x), y, x, y, num_classes=2)


# ----------------------------------------------------------------------------- command line


def _cli(*args, tmp_path):
    cmd = [sys.executable, "-m", "uhn_jax.cli", "train", "--workdir", str(tmp_path / "w"), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_config_typo_on_the_command_line_is_one_line(tmp_path):
    out = _cli("--config", str(CONFIG_DIR / "test.py"), "--config.train.stpes=3", tmp_path=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --config.train.stpes: the config has no field 'stpes'. "
        'Did you mean "steps" instead of "stpes"?'
    ]
    assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.py"
    out = _cli("--config", str(missing), tmp_path=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --config: cannot load the config file")
    assert str(missing) in lines[0] and "No such file" in lines[0]
