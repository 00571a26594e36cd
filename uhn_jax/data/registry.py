"""The open dataset registry: config ``data.name`` -> how to load it and what a run does with it.

Each entry names a loader ``fn(data_cfg) -> dataset`` (``data_cfg`` is the frozen
``uhn_jax.config.DataConfig``), the kind of task, the ``results.json`` task name, the model
families that suit it and the ``dataset_type`` value of its global descriptor. Every built-in
dataset is registered here; add your own from your code (or the config file that names it)::

    registry.register_dataset(
        "my_digits", lambda cfg: my_loader(cfg.data_dir), task="classification",
        results_task="image_cls", families=("mlp",), dataset_type=300,
    )

A name ending in ``:`` registers a whole namespace: ``"tfds:"`` serves ``tfds:mnist``,
``tfds:cifar10`` and any other TFDS image dataset (an exact registration wins over it).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from uhn_jax.core import descriptors
from uhn_jax.data import augment, chars, cifar, files, formulas, graphs, images, text, tfds

if TYPE_CHECKING:
    from uhn_jax.config import DataConfig

#: What a run optimises, by kind of dataset (the training floor implements each):
#: ``classification`` (images, text), ``node_classification`` (one graph, masked nodes),
#: ``regression`` (formulas), ``language_modeling`` (next-character prediction, in bits).
TASKS = ("classification", "node_classification", "regression", "language_modeling")
#: The ``results.json`` task names of the built-in datasets (the reference's TaskType names).
RESULTS_TASKS = ("image_cls", "graph_node_cls", "text_cls", "formula_regression", "char_lm")
#: ``dataset_type`` of the MR corpus as characters (``mr_chars``): next to the built-in MR (102).
MR_CHARS_DATASET_TYPE = 104
#: The namespace of TFDS-prepared image datasets: ``data.name = "tfds:<tfds name>"``.
TFDS_PREFIX = "tfds:"
#: ``dataset_type`` of a TFDS dataset without a built-in counterpart (mnist, fashion_mnist and
#: cifar10 keep their built-in values). Register a name exactly to give it its own value.
TFDS_DATASET_TYPE = 200

Loader = Callable[["DataConfig"], Any]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset (or, for a name ending in ``:``, a namespace of datasets).

    Attributes:
        name: The value of ``data.name``.
        loader: ``fn(data_cfg) -> dataset``: an ``images.ArrayDataset`` or ``text.TextData``
            for classification, a ``graphs.GraphData`` for node classification, a
            ``formulas.FormulaData`` for regression (or any object with their fields).
        task: One of :data:`TASKS`.
        results_task: The ``task`` written to ``results.json``, e.g. ``"image_cls"``.
        families: The model families that suit it by default (``model.family`` must be one).
        dataset_type: The global descriptor's ``dataset_type``: an int, or
            ``fn(data_cfg) -> int`` when it depends on the config (``formula``, ``tfds:``).
        augment: On-device training augmentation ``fn(key, images, mean, std) -> images`` for
            uint8 inputs, applied when ``data.augment`` is on; None = none defined.
    """

    name: str
    loader: Loader
    task: str
    results_task: str
    families: tuple[str, ...]
    dataset_type: int | Callable[[DataConfig], int]
    augment: Callable[..., Any] | None = None


_ENTRIES: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    loader: Loader,
    *,
    task: str,
    results_task: str,
    families: tuple[str, ...] | list[str],
    dataset_type: int | Callable[[DataConfig], int],
    augment: Callable[..., Any] | None = None,
    overwrite: bool = False,
) -> DatasetEntry:
    """Registers dataset ``name``, after which ``DataConfig(name=name, ...)`` loads it.

    Args:
        name: The value of ``data.name``; a name ending in ``:`` serves every name that starts
            with it (the loader reads the rest from ``data_cfg.name``).
        loader: ``fn(data_cfg) -> dataset`` (see :class:`DatasetEntry`).
        task: One of :data:`TASKS`.
        results_task: The ``results.json`` task name; the built-ins use :data:`RESULTS_TASKS`.
        families: Model families that suit the dataset, e.g. ``("mlp", "cnn")``.
        dataset_type: An int >= 0 for the global descriptor, or ``fn(data_cfg) -> int``.
            Datasets trained together should differ in it.
        augment: Optional on-device augmentation for uint8 image inputs.
        overwrite: Replace an entry already registered as ``name``.

    Returns:
        The new :class:`DatasetEntry`.

    Raises:
        ValueError: For a taken name (unless ``overwrite``), an empty name, an unknown task,
            no families, or a negative ``dataset_type``.
        TypeError: If ``loader`` (or a given ``augment``) is not callable.
    """
    if not isinstance(name, str) or not name or name.split() != [name]:
        raise ValueError(f"a dataset needs a non-empty name without spaces, got {name!r}")
    if name in _ENTRIES and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered; pass overwrite=True")
    if not callable(loader):
        raise TypeError(f"dataset {name!r}: loader must be callable, got {type(loader).__name__}")
    if augment is not None and not callable(augment):
        raise TypeError(f"dataset {name!r}: augment must be callable or None")
    if task not in TASKS:
        raise ValueError(f"dataset {name!r}: task must be one of {TASKS}, got {task!r}")
    if not isinstance(results_task, str) or not results_task.isidentifier():
        raise ValueError(
            f"dataset {name!r}: results_task must be a name like {RESULTS_TASKS[0]!r}, got "
            f"{results_task!r}"
        )
    families = (families,) if isinstance(families, str) else tuple(families)
    if not families or not all(isinstance(f, str) and f for f in families):
        raise ValueError(f"dataset {name!r}: families must be non-empty names, got {families!r}")
    if not callable(dataset_type):
        _check_dataset_type(name, dataset_type)
        dataset_type = int(dataset_type)
    entry = DatasetEntry(name, loader, task, results_task, families, dataset_type, augment)
    _ENTRIES[name] = entry
    return entry


def get(name: str) -> DatasetEntry:
    """The entry serving ``name``: its exact registration, else the longest ``prefix:`` one.

    Raises:
        ValueError: Naming the unknown dataset and listing the registered ones.
    """
    if name in _ENTRIES and not name.endswith(":"):
        return _ENTRIES[name]
    prefixes = [p for p in _ENTRIES if p.endswith(":") and name.startswith(p) and name != p]
    if prefixes:
        return _ENTRIES[max(prefixes, key=len)]
    spaces = [p for p in _ENTRIES if p.endswith(":")]
    hint = f" (namespaces: {', '.join(p + '<name>' for p in spaces)})" if spaces else ""
    raise ValueError(
        f"unknown dataset {name!r}; data.name must be one of "
        f"{', '.join(p for p in _ENTRIES if p not in spaces)}{hint}, or a dataset you add with "
        "uhn_jax.data.registry.register_dataset"
    )


def names() -> tuple[str, ...]:
    """The registered names, in registration order; a name ending in ``:`` is a namespace."""
    return tuple(_ENTRIES)


def load(data_cfg: DataConfig) -> Any:
    """Loads the dataset named by ``data_cfg.name`` with its registered loader.

    Raises:
        ValueError: If the name is unknown (see :func:`get`), or from the loader.
        MissingDataError: From loaders whose files are missing.
    """
    return get(data_cfg.name).loader(data_cfg)


def dataset_type(data_cfg: DataConfig) -> int:
    """The global descriptor's ``dataset_type`` for the dataset ``data_cfg`` names."""
    entry = get(data_cfg.name)
    if not callable(entry.dataset_type):
        return entry.dataset_type
    value = entry.dataset_type(data_cfg)
    _check_dataset_type(data_cfg.name, value)
    return int(value)


def load_image(
    name: str, data_dir: str | os.PathLike[str] = "", **loader_kwargs: Any
) -> images.ArrayDataset:
    """A built-in image dataset, called with its loader's own keyword arguments.

    Files are read from ``data_dir`` or its ``<name>/`` subdirectory (``files.load_from_dir``).

    Args:
        name: ``"digits"``, ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
        data_dir: Directory of the files; ignored by ``digits``, which ships with scikit-learn.
        **loader_kwargs: E.g. ``train="full"`` (MNIST) or ``source="jpeg", cache_dir=...``
            (CIFAR-10).

    Returns:
        The ``images.ArrayDataset``.
    """
    if name == "digits":
        return images.load_digits(**loader_kwargs)
    loaders = {
        "mnist": (images.load_mnist, images.MNIST_ADVICE),
        "fashion_mnist": (images.load_fashion_mnist, images.FASHION_MNIST_ADVICE),
        "cifar10": (cifar.load_cifar10, cifar.CIFAR10_ADVICE),
    }
    if name not in loaders:
        raise ValueError(
            f"unknown image dataset {name!r}; choose one of digits, {', '.join(loaders)}"
        )
    loader, advice = loaders[name]
    return files.load_from_dir(name, data_dir, loader, advice, **loader_kwargs)


def _check_dataset_type(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"dataset {name!r}: dataset_type must be an int >= 0, got {value!r}")


def _text_loader(name: str) -> Loader:
    def loader(d: DataConfig) -> text.TextData:
        kwargs: dict[str, Any] = {"vocab_size": d.vocab_size}
        if d.max_len:
            kwargs["max_len"] = d.max_len
        if name == "ag_news":
            kwargs["split"] = d.ag_news_split
        if d.vocab_from:
            kwargs["vocab"] = _source_vocab(d)
        return text.load(name, files.require_data_dir(name, d.data_dir), **kwargs)

    return loader


def _source_vocab(d: DataConfig) -> tuple[str, ...]:
    """The vocabulary of dataset ``d.vocab_from`` as a run on it builds it: from its own
    training texts, with ``d.vocab_size`` and (AG News) ``d.ag_news_split``; deterministic,
    so a model trained on that dataset reads the token ids of this one."""
    source = d.vocab_from
    kwargs: dict[str, Any] = {"vocab_size": d.vocab_size}
    if source == "ag_news":
        kwargs["split"] = d.ag_news_split
    return text.load(source, files.require_data_dir(source, d.data_dir), **kwargs).vocab


def _planetoid_loader(name: str) -> Loader:
    def loader(d: DataConfig) -> graphs.GraphData:
        data_dir = files.require_data_dir(name, d.data_dir, graphs.PLANETOID_ADVICE)
        return graphs.load_planetoid(name, data_dir)

    return loader


def _tfds_dataset_type(d: DataConfig) -> int:
    # "mnist", "mnist:3.0.1" and "mnist/config" are all MNIST to the descriptor.
    base = d.name[len(TFDS_PREFIX) :].split(":")[0].split("/")[0]
    same = {"mnist": "MNIST", "fashion_mnist": "FASHION_MNIST", "cifar10": "CIFAR10"}
    if base in same:
        return int(descriptors.DatasetType[same[base]])
    return TFDS_DATASET_TYPE


def _register_builtins() -> None:
    kinds = {
        "image": ("classification", "image_cls", ("mlp", "cnn", "ha_cnn")),
        "graph": ("node_classification", "graph_node_cls", ("gcn", "gat")),
        "text": ("classification", "text_cls", ("transformer",)),
    }
    D = descriptors.DatasetType
    builtins = [
        ("digits", "image", lambda d: images.load_digits(), D.DIGITS),
        ("mnist", "image", _load_mnist, D.MNIST),
        ("fashion_mnist", "image", _load_fashion_mnist, D.FASHION_MNIST),
        ("cifar10", "image", _load_cifar10, D.CIFAR10),
        *((n, "graph", _planetoid_loader(n), D[n.upper()]) for n in graphs.PLANETOID_NAMES),
        ("karate_club", "graph", lambda d: graphs.karate_club(), D.KARATE_CLUB),
        *((n, "text", _text_loader(n), D[n.upper()]) for n in text.TEXT_DATASETS),
    ]
    for name, kind, loader, value in builtins:
        task, results_task, families = kinds[kind]
        register_dataset(
            name,
            loader,
            task=task,
            results_task=results_task,
            families=families,
            dataset_type=int(value),
            augment=augment.augment_cifar if name == "cifar10" else None,
        )
    register_dataset(
        "formula",
        lambda d: formulas.make_formula_dataset(d.formula, seed=d.formula_seed),
        task="regression",
        results_task="formula_regression",
        families=("kan",),
        dataset_type=lambda d: formulas.get_formula(d.formula).dataset_type,
    )
    register_dataset(
        "mr_chars",
        lambda d: chars.lm_windows(
            chars.load_mr_chars(d.data_dir), d.max_len or chars.DEFAULT_SEQ_LEN
        ),
        task="language_modeling",
        results_task="char_lm",
        families=("lstm", "layernorm_lstm", "hyperlstm"),
        dataset_type=MR_CHARS_DATASET_TYPE,
    )
    register_dataset(
        TFDS_PREFIX,
        lambda d: tfds.load_tfds(d.name[len(TFDS_PREFIX) :], d.data_dir or None),
        task="classification",
        results_task="image_cls",
        families=("mlp", "cnn", "ha_cnn"),
        dataset_type=_tfds_dataset_type,
    )


def _load_mnist(d: DataConfig) -> images.ArrayDataset:
    return load_image("mnist", d.data_dir, train=d.mnist_train)


def _load_fashion_mnist(d: DataConfig) -> images.ArrayDataset:
    return load_image("fashion_mnist", d.data_dir)


def _load_cifar10(d: DataConfig) -> images.ArrayDataset:
    cache_dir = d.cache_dir or None
    return load_image("cifar10", d.data_dir, source=d.cifar_source, cache_dir=cache_dir)


_register_builtins()
