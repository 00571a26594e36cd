"""Tests for uhn_jax.data.registry and user formulas (uhn_jax.data.formulas.register_formula)."""

import numpy as np
import pytest
import scipy.special
from conftest import real_data_dir
from test_data import write_fake_split

from uhn_jax.config import DataConfig
from uhn_jax.core.descriptors import DatasetType
from uhn_jax.data import augment, formulas, graphs, images, registry, text

# The built-ins as config.py and train.py described them before the registry: task kind,
# results.json task, default model families, descriptor value.
_IMAGE = ("classification", "image_cls", ("mlp", "cnn", "ha_cnn"))
_GRAPH = ("node_classification", "graph_node_cls", ("gcn", "gat"))
_TEXT = ("classification", "text_cls", ("transformer",))
EXPECTED = {
    "digits": (*_IMAGE, DatasetType.DIGITS),
    "mnist": (*_IMAGE, DatasetType.MNIST),
    "fashion_mnist": (*_IMAGE, DatasetType.FASHION_MNIST),
    "cifar10": (*_IMAGE, DatasetType.CIFAR10),
    "cora": (*_GRAPH, DatasetType.CORA),
    "citeseer": (*_GRAPH, DatasetType.CITESEER),
    "pubmed": (*_GRAPH, DatasetType.PUBMED),
    "karate_club": (*_GRAPH, DatasetType.KARATE_CLUB),
    "ag_news": (*_TEXT, DatasetType.AG_NEWS),
    "imdb": (*_TEXT, DatasetType.IMDB),
    "mr": (*_TEXT, DatasetType.MR),
}


@pytest.fixture
def scratch(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    monkeypatch.setattr(formulas, "_REGISTRY", dict(formulas._REGISTRY))


def _tiny_images(name: str, n: int = 6) -> images.ArrayDataset:
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2)
    y = (np.arange(n) % 3).astype(np.int32)
    return images.ArrayDataset(name, x, y, x[:2], y[:2], num_classes=3)


# --- built-ins -------------------------------------------------------------------------------


def test_every_builtin_keeps_its_task_families_and_dataset_type():
    assert registry.names() == (*EXPECTED, "formula", "mr_chars", "tfds:")
    for name, (task, results_task, families, value) in EXPECTED.items():
        entry = registry.get(name)
        assert (entry.name, entry.task, entry.results_task) == (name, task, results_task)
        assert entry.families == families
        assert registry.dataset_type(DataConfig(name=name)) == int(value), name
        assert entry.augment is (augment.augment_cifar if name == "cifar10" else None)
    formula = registry.get("formula")
    assert (formula.task, formula.results_task, formula.families) == (
        "regression",
        "formula_regression",
        ("kan",),
    )
    chars = registry.get("mr_chars")
    assert (chars.task, chars.results_task) == ("language_modeling", "char_lm")
    assert chars.families == ("lstm", "layernorm_lstm", "hyperlstm")
    assert registry.dataset_type(DataConfig(name="mr_chars")) == registry.MR_CHARS_DATASET_TYPE


def test_formula_dataset_types_follow_the_reference_enum():
    for i, name in enumerate(formulas.FORMULAS):
        cfg = DataConfig(name="formula", formula=name)
        assert registry.dataset_type(cfg) == DatasetType.SPECIAL_ELLIPJ + i == 7 + i


def test_tfds_namespace_serves_any_name_and_keeps_builtin_dataset_types():
    for name, value in (
        ("tfds:mnist", DatasetType.MNIST),
        ("tfds:mnist:3.0.1", DatasetType.MNIST),
        ("tfds:cifar10", DatasetType.CIFAR10),
        ("tfds:svhn_cropped", registry.TFDS_DATASET_TYPE),
    ):
        assert registry.get(name).name == "tfds:"
        assert registry.dataset_type(DataConfig(name=name)) == value


def test_load_digits_ignores_data_dir():
    ds = registry.load(DataConfig(name="digits", data_dir="/unused"))
    np.testing.assert_array_equal(ds.y_train, images.load_digits().y_train)


def test_load_passes_config_fields_to_the_loader(tmp_path):
    write_fake_split(tmp_path, "train", 20, seed=1)
    write_fake_split(tmp_path, "t10k", 10, seed=2)
    ds = registry.load(DataConfig(name="mnist", data_dir=str(tmp_path), mnist_train="full"))
    assert ds.name == "mnist" and len(ds.x_train) == 20 and len(ds.x_test) == 10


def test_load_finds_files_in_the_dataset_named_subdirectory(tmp_path):
    (tmp_path / "mnist").mkdir()
    _, labels = write_fake_split(tmp_path / "mnist", "t10k", 6, seed=5)
    write_fake_split(tmp_path / "mnist", "train", 8, seed=6)
    ds = registry.load(DataConfig(name="mnist", data_dir=str(tmp_path), mnist_train="full"))
    np.testing.assert_array_equal(ds.y_test, labels)
    with pytest.raises(FileNotFoundError, match="t10k"):
        registry.load_image("mnist", tmp_path / "mnist" / "nowhere", train="full")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cora", "ag_news", "mr"])
def test_file_datasets_require_data_dir(name):
    with pytest.raises(ValueError, match=f"Dataset '{name}'.*data.data_dir must be set"):
        registry.load(DataConfig(name=name))


def test_load_karate_club_and_formula():
    assert registry.load(DataConfig(name="karate_club")).num_nodes == 34
    ds = registry.load(DataConfig(name="formula", formula="iv", formula_seed=3))
    expected = formulas.make_formula_dataset("iv", seed=3)
    assert ds.name == "iv"
    np.testing.assert_array_equal(ds.x_train, expected.x_train)


def test_real_text_and_graph_loaders_get_their_config_fields():
    mr = registry.load(
        DataConfig(name="mr", data_dir=str(real_data_dir("rt_polarity")), max_len=16, vocab_size=50)
    )
    assert isinstance(mr, text.TextData)
    assert mr.x_train.shape[1] == 16 and len(mr.vocab) == 50
    cora = registry.load(DataConfig(name="cora", data_dir=str(real_data_dir("planetoid"))))
    assert isinstance(cora, graphs.GraphData) and cora.x.shape == (2708, 1433)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar100", "tfds:", "TFDS:mnist", ""])
def test_unknown_name_is_named_and_known_names_listed(name):
    with pytest.raises(ValueError, match=f"unknown dataset {name!r}") as info:
        registry.load(DataConfig(name=name))
    for known in (*EXPECTED, "formula", "tfds:<name>", "register_dataset"):
        assert known in str(info.value), known


def test_unknown_formula_is_named_and_choices_listed():
    with pytest.raises(ValueError, match="unknown formula 'erf2'.*jv.*register_formula"):
        registry.load(DataConfig(name="formula", formula="erf2"))


def test_load_image_rejects_other_names():
    with pytest.raises(ValueError, match="unknown image dataset 'cora'"):
        registry.load_image("cora", "/data")


# --- user datasets ---------------------------------------------------------------------------


def test_user_dataset_loads_through_the_registry(scratch):
    seen = []

    def loader(cfg):
        seen.append(cfg)
        return _tiny_images("blobs")

    entry = registry.register_dataset(
        "blobs",
        loader,
        task="classification",
        results_task="tabular_cls",
        families=["mlp"],
        dataset_type=300,
    )
    cfg = DataConfig(name="blobs", data_dir="/somewhere")
    ds = registry.load(cfg)
    assert seen == [cfg] and ds.name == "blobs" and ds.x_train.shape == (6, 2, 2)
    assert registry.get("blobs") is entry and entry.families == ("mlp",)
    assert registry.dataset_type(cfg) == 300
    assert registry.names()[-1] == "blobs"


def test_user_namespace_and_exact_name_precedence(scratch):
    common = dict(task="classification", results_task="image_cls", families=("mlp",))
    registry.register_dataset(
        "toy:", lambda cfg: _tiny_images(cfg.name, n=int(cfg.name[4:])), dataset_type=400, **common
    )
    assert registry.load(DataConfig(name="toy:8")).x_train.shape == (8, 2, 2)
    registry.register_dataset("toy:5", lambda cfg: "exact", dataset_type=401, **common)
    assert registry.load(DataConfig(name="toy:5")) == "exact"
    assert registry.dataset_type(DataConfig(name="toy:5")) == 401
    assert registry.dataset_type(DataConfig(name="toy:6")) == 400


def test_reregistration_needs_overwrite(scratch):
    common = dict(
        task="classification", results_task="image_cls", families=("mlp", "cnn", "ha_cnn")
    )
    with pytest.raises(ValueError, match="'mnist' is already registered; pass overwrite=True"):
        registry.register_dataset("mnist", lambda cfg: None, dataset_type=0, **common)
    registry.register_dataset(
        "mnist", lambda cfg: _tiny_images("mine"), dataset_type=0, overwrite=True, **common
    )
    assert registry.load(DataConfig(name="mnist")).name == "mine"


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"name": "two words"}, ValueError, "non-empty name without spaces"),
        ({"name": ""}, ValueError, "non-empty name"),
        ({"loader": "not a function"}, TypeError, "loader must be callable"),
        ({"task": "segmentation"}, ValueError, "task must be one of"),
        ({"results_task": "image cls"}, ValueError, "results_task"),
        ({"families": ()}, ValueError, "families must be non-empty"),
        ({"dataset_type": -1}, ValueError, "dataset_type must be an int >= 0"),
        ({"dataset_type": 1.5}, ValueError, "dataset_type must be an int >= 0"),
        ({"augment": 3}, TypeError, "augment must be callable"),
    ],
)
def test_register_dataset_validates_its_arguments(scratch, overrides, error, match):
    kwargs = dict(
        name="mine",
        loader=lambda cfg: None,
        task="classification",
        results_task="image_cls",
        families=("mlp",),
        dataset_type=300,
    )
    kwargs.update(overrides)
    with pytest.raises(error, match=match):
        registry.register_dataset(kwargs.pop("name"), kwargs.pop("loader"), **kwargs)
    assert "mine" not in registry.names()


def test_callable_dataset_type_is_checked_when_resolved(scratch):
    registry.register_dataset(
        "bad",
        lambda cfg: None,
        task="regression",
        results_task="formula_regression",
        families=("kan",),
        dataset_type=lambda cfg: -5,
    )
    with pytest.raises(ValueError, match="'bad': dataset_type must be an int >= 0, got -5"):
        registry.dataset_type(DataConfig(name="bad"))


# --- user formulas ---------------------------------------------------------------------------


def _erf_times(x):
    return scipy.special.erf(x[:, 0]) * x[:, 1]


def test_user_formula_loads_through_the_registry(scratch):
    formula = formulas.register_formula(
        "my_erf",
        _erf_times,
        d_in=2,
        dataset_type=500,
        input_ranges=[(-2.0, 2.0), (0.0, 3.0)],
        definition="erf(x1) * x2",
    )
    assert formula.d_in == 2 and formula.d_out == 1
    assert formulas.names()[-1] == "my_erf" and "my_erf" not in formulas.FORMULAS
    cfg = DataConfig(name="formula", formula="my_erf", formula_seed=4)
    ds = registry.load(cfg)
    assert ds.name == "my_erf" and ds.x_train.shape == (1000, 2) and ds.y_test.shape == (1000, 1)
    # Targets are the user's function at the raw inputs, which span the declared ranges.
    raw = formulas.to_raw(ds.x_train, ds.input_ranges)
    np.testing.assert_allclose(ds.y_train[:, 0], _erf_times(raw), rtol=1e-5, atol=1e-6)
    assert raw[:, 0].min() < -1.9 and raw[:, 0].max() > 1.9 and raw[:, 1].max() > 2.9
    assert registry.dataset_type(cfg) == 500
    again = registry.load(cfg)
    np.testing.assert_array_equal(again.y_train, ds.y_train)


def test_user_formula_with_several_outputs(scratch):
    formulas.register_formula(
        "pair", lambda x: np.stack([x.sum(1), x.prod(1)], 1), 3, 2, dataset_type=501
    )
    ds = registry.load(DataConfig(name="formula", formula="pair"))
    assert (ds.d_in, ds.d_out) == (3, 2)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (("jv", _erf_times, 2), {"dataset_type": 500}, ValueError, "'jv' is already registered"),
        (("e", _erf_times, 2), {"dataset_type": 10}, ValueError, "taken by formula 'jv'"),
        (("e", _erf_times, 2), {"dataset_type": -1}, ValueError, "must be >= 0"),
        (("e", _erf_times, 2), {"dataset_type": True}, ValueError, "must be an int"),
        (("e", _erf_times, 2, 2), {"dataset_type": 500}, ValueError, r"expected \(2, 2\)"),
        (("e", _erf_times, 0), {"dataset_type": 500}, ValueError, "d_in must be a positive"),
        (("e", "erf", 2), {"dataset_type": 500}, TypeError, "fn must be callable"),
        (("", _erf_times, 2), {"dataset_type": 500}, ValueError, "non-empty string"),
        (
            ("e", _erf_times, 2),
            {"dataset_type": 500, "input_ranges": [(0, 1)]},
            ValueError,
            "1 input_ranges for d_in=2",
        ),
        (
            ("e", _erf_times, 2),
            {"dataset_type": 500, "input_ranges": [(0, 1), (1, 1)]},
            ValueError,
            "lo < hi",
        ),
    ],
)
def test_register_formula_rejects_bad_input(scratch, args, kwargs, error, match):
    before = formulas.names()
    with pytest.raises(error, match=match):
        formulas.register_formula(*args, **kwargs)
    assert formulas.names() == before


def test_register_formula_overwrite_replaces_and_may_keep_its_dataset_type(scratch):
    formulas.register_formula("e", _erf_times, 2, dataset_type=502)
    formulas.register_formula("e", lambda x: x[:, 0], 2, dataset_type=502, overwrite=True)
    ds = registry.load(DataConfig(name="formula", formula="e"))
    raw = formulas.to_raw(ds.x_test, ds.input_ranges)
    np.testing.assert_allclose(ds.y_test[:, 0], raw[:, 0], atol=1e-7)


def test_formula_that_is_not_finite_fails_when_sampled(scratch):
    # Finite at the registration probe (the middle of the range), NaN on half the range.
    formulas.register_formula(
        "half_nan", lambda x: np.where(x[:, 0] < 0.4, np.nan, x[:, 0]), 1, dataset_type=503
    )
    with pytest.raises(ValueError, match="half_nan: the formula is not finite"):
        registry.load(DataConfig(name="formula", formula="half_nan"))
