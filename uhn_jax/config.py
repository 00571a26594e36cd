"""Frozen, validated experiment configuration; built from an ``ml_collections.ConfigDict``.

Library code sees only these dataclasses. :func:`from_config_dict` is the boundary: it rejects
unknown fields and bad values with a ``ValueError`` naming the field, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from uhn_jax.core import checks
from uhn_jax.generator import settings as generator_settings

# The library's own families (uhn_jax.models.families); users register more. A built-in family
# must suit the dataset (its registry entry's ``families``); a user's family fits any dataset.
MODEL_FAMILIES = (
    "mlp", "cnn", "ha_cnn", "gcn", "gat", "transformer", "kan", "lstm", "layernorm_lstm",
    "hyperlstm",
)  # fmt: skip
AG_NEWS_SPLITS = ("auto", "official", "test_only")
CIFAR_SOURCES = ("auto", "pickle", "jpeg")
# The generator's settings live with the generator (one set of defaults for the Linen module
# and for configs); these names keep config.GeneratorConfig, config.MATMUL_DTYPES, ... working.
GeneratorConfig = generator_settings.GeneratorConfig
ENCODINGS = generator_settings.ENCODINGS
OUT_OF_RANGE = generator_settings.OUT_OF_RANGE
MATMUL_DTYPES = generator_settings.MATMUL_DTYPES
SEPARABLE_METHODS = generator_settings.SEPARABLE_METHODS
MNIST_TRAIN = ("mlxtend5k", "full")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset, and where its files are."""

    name: str = "digits"
    data_dir: str = ""  # needed by mnist / fashion_mnist; digits ships with scikit-learn
    mnist_train: str = "mlxtend5k"  # "mlxtend5k" (real 5k subset) or "full" (idx files)
    cifar_source: str = "auto"  # "pickle" batches, "jpeg" tarball, or "auto"
    cache_dir: str = ""  # where decoded CIFAR JPEGs are cached ("" = no cache)
    augment: bool = True  # the reference augmentation for datasets that define one (CIFAR)
    # Text: sequence length with <cls> (0 = the dataset's default: ag_news 128, imdb 512, mr 64)
    # and vocabulary size (specials included).
    max_len: int = 0
    vocab_size: int = 5000
    # "auto" = train.csv + test.csv when both exist, else a fixed stratified 80/20 split of
    # test.csv alone ("test_only"); see text_data.load_ag_news.
    ag_news_split: str = "auto"
    # Text: encode this dataset with the vocabulary of another text dataset ("" = its own), as
    # a run on that one builds it (its training texts, data.vocab_size, data.ag_news_split):
    # what a model trained there and adapted here (mode=adapt) reads.
    vocab_from: str = ""
    # Formula regression: which formula, and the seed of its 1000 + 1000 sampled points (fixed
    # across run seeds, so every seed and both modes see the same data).
    formula: str = "jv"
    formula_seed: int = 21962

    def validate(self):
        from uhn_jax.data import formulas, registry

        registry.get(self.name)  # ValueError naming the registered datasets
        checks.choice("data.formula", self.formula, formulas.names())
        checks.choice("data.ag_news_split", self.ag_news_split, AG_NEWS_SPLITS)
        self._validate_vocab_from()
        if self.max_len != 0 and (not isinstance(self.max_len, int) or self.max_len < 2):
            raise ValueError(f"data.max_len must be 0 (default) or an int >= 2, got {self.max_len}")
        if not isinstance(self.vocab_size, int) or self.vocab_size < 4:
            raise ValueError(f"data.vocab_size must be an int >= 4, got {self.vocab_size!r}")
        if not isinstance(self.formula_seed, int) or self.formula_seed < 0:
            raise ValueError(f"data.formula_seed must be an int >= 0, got {self.formula_seed!r}")
        checks.choice("data.mnist_train", self.mnist_train, MNIST_TRAIN)
        checks.choice("data.cifar_source", self.cifar_source, CIFAR_SOURCES)

    def _validate_vocab_from(self) -> None:
        if not self.vocab_from:
            return
        from uhn_jax.data import text

        if self.name not in text.TEXT_DATASETS:
            raise ValueError(
                f"data.vocab_from ({self.vocab_from!r}) applies to a text dataset, but data.name "
                f"is {self.name!r}; use one of {text.TEXT_DATASETS} or leave data.vocab_from empty"
            )
        others = tuple(n for n in text.TEXT_DATASETS if n != self.name)
        if self.vocab_from not in others:
            raise ValueError(
                f"data.vocab_from must be another text dataset than data.name ({self.name!r}), "
                f"one of {others} (or empty for its own vocabulary), got {self.vocab_from!r}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The base (target) model."""

    family: str = "mlp"  # a registered family (uhn_jax.models.registry)
    # mlp, gcn, kan: hidden widths; cnn: channels per stage; gat: (per-head hidden width,);
    # transformer: unused (see embed_dim).
    widths: tuple[int, ...] = (128, 128)
    depths: tuple[int, ...] = (6, 6, 6)  # cnn only: convs per stage
    kernel_size: int = 3  # cnn, ha_cnn
    # ha_cnn: widths of ReLU Linear layers between the convs and the head (Deutsch et al.'s
    # MNIST target network: (8,)).
    head_hidden: tuple[int, ...] = ()
    groups: int = 4  # cnn only: GroupNorm groups
    slope: float = 0.1
    dropout_rate: float = 0.0
    # gat: heads of the hidden layer, heads of the output layer (averaged when > 1), and dropout
    # on the attention coefficients. transformer: num_heads is the MHA head count.
    num_heads: int = 8
    output_heads: int = 1
    attention_dropout: float = 0.6
    # transformer
    embed_dim: int = 64
    num_encoders: int = 2
    linears_per_encoder: int = 2
    # Rows of the positional table, the longest input the model accepts (0 = the data's
    # sequence length, data.max_len). Larger lets a model read shorter data than it was built
    # for: a frozen source adapted to a dataset of shorter texts (configs/adapt_text.py).
    max_positions: int = 0
    # kan
    grid_size: int = 5
    spline_order: int = 3
    # A model-set JSON (uhn_jax.training.model_sets.save): train one UHN over its hold-in
    # members and evaluate hold-in and held-out members. "" = one model, described by the
    # fields above.
    model_set: str = ""

    def validate(self):
        from uhn_jax import models

        family = models.get_family(self.family)  # ValueError naming the registered families
        if family.validate is not None:
            family.validate(self)
        for w in self.head_hidden:
            checks.positive_int("model.head_hidden", w)
        checks.non_negative_int("model.max_positions", self.max_positions, " (0 = data.max_len)")
        for name in ("widths", "depths"):
            value = getattr(self, name)
            if not value or any(not isinstance(w, int) or w < 1 for w in value):
                raise ValueError(
                    f"model.{name} must be a non-empty tuple of positive ints, got {value!r}"
                )
        if self.family == "cnn":
            if len(self.depths) != len(self.widths):
                raise ValueError(
                    f"model.depths {self.depths} and model.widths {self.widths} need one entry "
                    "per stage each"
                )
            if any(w % self.groups for w in self.widths):
                raise ValueError(
                    f"model.widths {self.widths} must be divisible by model.groups={self.groups}"
                )
            if self.kernel_size < 1 or self.kernel_size % 2 == 0:
                raise ValueError(
                    f"model.kernel_size must be odd and positive, got {self.kernel_size}"
                )
        if self.family == "gat" and len(self.widths) != 1:
            raise ValueError(f"model.widths for gat is (per-head hidden width,), got {self.widths}")
        for name in ("num_heads", "output_heads", "embed_dim", "num_encoders", "grid_size"):
            checks.positive_int(f"model.{name}", getattr(self, name))
        for name in ("linears_per_encoder", "spline_order"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.family == "transformer" and self.embed_dim % self.num_heads:
            raise ValueError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads "
                f"({self.num_heads})"
            )
        checks.in_range("model.dropout_rate", self.dropout_rate, 0.0, 1.0, hi_open=True)
        checks.in_range("model.attention_dropout", self.attention_dropout, 0.0, 1.0, hi_open=True)
        checks.in_range("model.slope", self.slope, 0.0, 1.0)


CONDITIONINGS = ("onehot", "random", "input")


@dataclasses.dataclass(frozen=True)
class HyperNetConfig:
    """The classic hypernetwork kinds (``mode=conditional``, ``mode=static``).

    The UHN reads ``generator``; these kinds read this group.
    """

    # What conditions the generated weights: a fixed one-hot task vector, a fixed random vector
    # (both one condition for the whole run), or "input": each example's own encoding
    # (data-adaptive weights; every example gets its own target network).
    conditioning: str = "onehot"
    conditioning_size: int = 8
    hidden_sizes: tuple[int, ...] = (64,)  # each weight generator's hidden layers
    activation: str = "relu"
    # mode=static (Ha et al.'s static hypernetwork): the conv layers whose kernels are generated
    # from learned block embeddings of size embedding_size (N_z = d), in blocks of block_size
    # input x block_size output channels; the other params train directly.
    static_layers: tuple[str, ...] = ("layer_001",)
    embedding_size: int = 4
    block_size: int = 16
    # mode=diverse (Deutsch et al. 2018): noise z ~ U(-1, 1)^noise_size -> extractor MLP ->
    # a code_size code per filter -> per layer, one weight generator of filter_depth hidden
    # layers of width filter_hidden[layer] shared by the layer's filters. Each step generates
    # noise_batch networks, each trained on train.batch_size / noise_batch images, and adds
    # diversity_weight x (minus the entropy estimate of the gauge-fixed weights) to the loss.
    # Evaluation generates its networks with batch-norm statistics from reference_batch fixed
    # noise vectors.
    noise_size: int = 300
    noise_batch: int = 32
    diversity_weight: float = 1e-3
    extractor_sizes: tuple[int, ...] = (300, 300)
    code_size: int = 15
    filter_hidden: tuple[int, ...] = (40, 100, 100, 60)
    filter_depth: int = 2
    leaky_slope: float = 0.05
    reference_batch: int = 256
    # mode=ensemble: a deep ensemble of this many directly trained copies of the base model,
    # each on train.batch_size / ensemble_size images per step.
    ensemble_size: int = 32

    def validate(self):
        checks.positive_int("hypernet.embedding_size", self.embedding_size)
        checks.positive_int("hypernet.block_size", self.block_size)
        if not self.static_layers:
            raise ValueError("hypernet.static_layers must name at least one conv layer")
        checks.choice("hypernet.conditioning", self.conditioning, CONDITIONINGS)
        from uhn_jax.hypernets import conditional_layers

        checks.choice("hypernet.activation", self.activation, tuple(conditional_layers.ACTIVATIONS))
        checks.positive_int("hypernet.conditioning_size", self.conditioning_size)
        if not self.hidden_sizes:
            raise ValueError("hypernet.hidden_sizes must name at least one hidden layer")
        for h in self.hidden_sizes:
            checks.positive_int("hypernet.hidden_sizes", h)
        for name in ("noise_size", "code_size", "reference_batch", "ensemble_size"):
            checks.positive_int(f"hypernet.{name}", getattr(self, name))
        checks.non_negative_int("hypernet.filter_depth", self.filter_depth)
        if not isinstance(self.noise_batch, int) or self.noise_batch < 2:
            raise ValueError(
                f"hypernet.noise_batch must be an int >= 2 (the entropy estimate needs a nearest "
                f"neighbour in the batch of generated networks), got {self.noise_batch!r}"
            )
        if not isinstance(self.diversity_weight, int | float) or self.diversity_weight < 0:
            raise ValueError(
                f"hypernet.diversity_weight must be >= 0, got {self.diversity_weight!r}"
            )
        for name in ("extractor_sizes", "filter_hidden"):
            for w in getattr(self, name):
                checks.positive_int(f"hypernet.{name}", w)


ADAPT_METHODS = ("head", "attention", "full")


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """``mode=adapt``: a trained model, frozen, adapted to this run's dataset
    (:mod:`uhn_jax.hypernets.adapt_kind`, docs/attention_hypernet.md)."""

    # What trains: "head" (a new classifier head on the frozen model), "attention" (attention
    # hypernetworks on every attention layer + a new head) or "full" (every param, starting
    # from the source's, with a new head).
    method: str = "attention"
    # The source model: a run's `uhn-jax export` directory, or a run directory holding one
    # (WORKDIR/export). Its architecture must be this run's model but for the head.
    source: str = ""
    # The params key of the classifier head, replaced by a fresh one ("" = the model's last
    # top-level params entry in key order, e.g. the Transformer's last layer_NNN).
    head: str = ""
    # method=attention: the pairs' uhn_jax.hypernets.attention.Settings. (1, 0.25, 1) keeps
    # them under 10 % of the text Transformer's params (docs/attention_hypernet.md).
    layer_structure: tuple[float, ...] = (1.0, 0.25, 1.0)
    activation: str = "relu"
    layer_norm: bool = False
    dropout_rate: float = 0.0
    init: str = "zero_last"
    shared: bool = False
    strength: float = 1.0

    def settings(self):
        """The attention pairs' :class:`uhn_jax.hypernets.attention.Settings`.

        Raises:
          ValueError: naming the ``adapt.`` field of a bad value.
        """
        from uhn_jax.hypernets import attention

        fields = [f.name for f in dataclasses.fields(attention.Settings)]
        values = {n: getattr(self, n) for n in fields}
        try:
            return attention.Settings(**values)
        except ValueError as e:
            raise ValueError(str(e).replace("Settings.", "adapt.")) from None

    def validate(self):
        checks.choice("adapt.method", self.method, ADAPT_METHODS)
        self.settings()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation and checkpointing."""

    steps: int = 1000  # task-training steps (after the initialisation stage)
    batch_size: int = 256
    lr: float = 2e-4
    # Learning rate of direct training when it differs from the UHN's (0 = use lr).
    direct_lr: float = 0.0
    warmup_steps: int = 0  # linear warm-up, then cosine decay to 0
    grad_clip: float = 0.0  # global-norm clipping; 0 = off
    # Scale every step's gradient to unit global norm before AdamW (after clipping). In a
    # multi-task run this keeps tasks with small gradients from being drowned by the others in
    # Adam's shared second-moment estimate. Off in the reference.
    normalize_grads: bool = False
    init_steps: int = 100  # UHN moment-matching stage (ignored in direct mode)
    init_lr: float = 2e-4
    eval_every: int = 0  # 0 = only at the end
    eval_batch_size: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    # Devices of the 1-D mesh that splits descriptor rows and batches (0 = all devices).
    num_devices: int = 0

    def validate(self):
        checks.positive_int("train.steps", self.steps)
        checks.positive_int("train.batch_size", self.batch_size)
        checks.positive_int("train.eval_batch_size", self.eval_batch_size)
        checks.positive_int("train.log_every", self.log_every)
        checks.positive_int("train.checkpoint_every", self.checkpoint_every)
        for name in ("warmup_steps", "init_steps", "eval_every", "num_devices"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"train.warmup_steps ({self.warmup_steps}) must be smaller than train.steps "
                f"({self.steps})"
            )
        checks.in_range("train.lr", self.lr, 0.0, 1.0, lo_open=True)
        checks.in_range("train.direct_lr", self.direct_lr, 0.0, 1.0)
        checks.in_range("train.init_lr", self.init_lr, 0.0, 1.0)
        checks.in_range("train.grad_clip", self.grad_clip, 0.0, float("inf"))
        if not isinstance(self.normalize_grads, bool):
            raise ValueError(f"train.normalize_grads must be a bool, got {self.normalize_grads!r}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A whole run."""

    mode: str = "uhn"  # a hypernetwork kind (uhn_jax.hypernets): uhn, direct, ...
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    generator: GeneratorConfig = GeneratorConfig()
    hypernet: HyperNetConfig = HyperNetConfig()
    adapt: AdaptConfig = AdaptConfig()
    train: TrainConfig = TrainConfig()

    def validate(self) -> Experiment:
        from uhn_jax import hypernets

        kind = hypernets.get(self.mode)  # ValueError naming the registered kinds
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        for part in (self.data, self.model, self.generator, self.hypernet, self.adapt, self.train):
            part.validate()
        if 0 < self.model.max_positions < self.data.max_len:
            raise ValueError(
                f"model.max_positions ({self.model.max_positions}) must be at least data.max_len "
                f"({self.data.max_len}): the positional table needs a row for every position"
            )
        kind.validate(self)
        from uhn_jax.data import registry

        allowed = registry.get(self.data.name).families
        if self.model.family in MODEL_FAMILIES and self.model.family not in allowed:
            raise ValueError(
                f"model.family {self.model.family!r} does not fit data.name "
                f"{self.data.name!r}; use one of {allowed}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plain_dict(cfg, what: str) -> dict[str, Any]:
    """A deep, plain (JSON) copy of a config (an ``ml_collections.ConfigDict`` or a mapping);
    tuples become lists. ``what`` names the config in the error (``"a zoo config"``)."""
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what} is a mapping of config groups, got {type(cfg).__name__}")
    return json.loads(json.dumps(dict(cfg)))


def config_group(value: Any, where: str, allowed: Sequence[str], what: str) -> dict[str, Any]:
    """``value``, the config group at ``where``, as a dict after checking it is a mapping of
    ``allowed`` fields only.

    Raises:
      ValueError: naming ``where`` (not a group) or each unknown ``<where>.<field>``; ``what``
        names the config (``"zoo config"``).
    """
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: {where} must be a group of fields, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(
            f"{what}: unknown field(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"{where} has {', '.join(allowed)}"
        )
    return dict(value)


def from_config_dict(cfg: Mapping[str, Any]) -> Experiment:
    """Converts a (nested) mapping, e.g. an ``ml_collections.ConfigDict``, to an Experiment.

    Raises:
      ValueError: for unknown fields or invalid values, naming the field.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise TypeError(
            "from_config_dict: cfg must be a mapping such as the ConfigDict of a "
            f"configs/*.py get_config(), got {type(cfg).__name__}"
        )
    return _build(Experiment, dict(cfg), prefix="").validate()


def _build(cls, values: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(prefix + u for u in unknown)}; "
            f"known fields here: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ValueError(f"config field {prefix}{name} must be a group, got {value!r}")
            kwargs[name] = _build(hint, dict(value), prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, int):
            value = (value,)
        if not isinstance(value, list | tuple):
            raise ValueError(f"config field {name} must be a tuple, got {value!r}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config field {name} must be true or false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ValueError(f"config field {name} must be {hint.__name__}, got {value!r}")
    return value


def default_config_dict():
    """A ConfigDict holding every field at its default; configs start from it."""
    import ml_collections

    return ml_collections.ConfigDict(Experiment().to_dict())
