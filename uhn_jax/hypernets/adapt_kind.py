"""The ``adapt`` kind: a trained model, frozen, adapted to this run's dataset (issue 25).

The source model (``adapt.source``: a run's ``uhn-jax export``, or the run directory holding
it) gives every param but the classifier head (``adapt.head``, by default the model's last
top-level params entry in key order), which starts fresh for the new dataset's classes.
``adapt.method`` chooses what trains:

* ``head``: the new head only. Params ``{"head"}``, constants ``{"frozen": the rest}``.
* ``attention``: the new head and an attention hypernetwork pair on every attention layer of
  the frozen model (:mod:`uhn_jax.hypernets.attention_attach`, settings from the ``adapt``
  group). Params ``{"head", "attention"}``, the same constants. The pairs act inside the
  model's forward pass, so no base-model params hold them: the kind is :meth:`per_example`,
  and evaluation runs :meth:`forward` (the base model on :meth:`target_params` would drop
  them). With ``adapt.init="zero_last"`` the model computes the source's features exactly at
  step 0.
* ``full``: every param, starting from the source's (fine-tuning). Params ``{"model"}``.

The source must be this run's model but for the head: every other leaf is checked against
``setup.model.init``'s shapes (the first mismatch is named). A text model also needs the
source's vocabulary: ``data.vocab_from`` encodes the new dataset with it. When the source's
``config.json`` is found (a run directory, or an export inside one), :meth:`Adapt.validate`
also checks the model fields, ``data.vocab_from``, ``data.vocab_size`` and the positions
(``model.max_positions``, else ``data.max_len``: the data may be shorter) against it, naming
the field.

When the run ends, :meth:`Adapt.finish` writes the trained head (``head/``, a plain orbax
params checkpoint like an export) and, for ``attention``, the pairs (``attention_hypernet/``,
:func:`uhn_jax.hypernets.attention.save`) into the workdir; ``results.json`` gets their sizes
in bytes and the trained and frozen parameter counts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from uhn_jax.hypernets import attention, attention_attach, base

#: What the kind writes into the workdir when a run ends (:meth:`Adapt.finish`).
HEAD_DIR, ATTENTION_DIR = "head", "attention_hypernet"
#: Model fields a source may differ in: they change training, not the function it computes
#: (the positional table's rows, max_positions or data.max_len, are compared as one count).
_FREE_MODEL_FIELDS = ("dropout_rate", "attention_dropout", "max_positions")
_NO_SOURCE = (
    "adapt.source must name the source model (mode=adapt): a run's `uhn-jax export` directory, "
    "or the run directory holding it (WORKDIR/export)"
)
_FIT_HINT = (
    "the source must be this run's model but for the head: the same model.* fields, "
    "data.vocab_size and data.max_len, and data.vocab_from=<the source's dataset> for a text "
    "model (its vocabulary)"
)


# ----------------------------------------------------------------------------- the source


def source_dir(source: str) -> Path:
    """The export directory ``adapt.source`` names: itself, or ``<run>/export`` of a run.

    Raises:
      ValueError: naming ``adapt.source`` if it is empty, missing, or a run without export.
    """
    if not source:
        raise ValueError(_NO_SOURCE)
    path = Path(source)
    if not path.exists():
        raise ValueError(f"adapt.source {source!r} does not exist")
    if (path / "config.json").exists():  # a run directory
        if not (path / "export").exists():
            raise ValueError(
                f"adapt.source {source!r} is a run directory without an export: run "
                f"`uhn-jax export --workdir {source}` first (it writes {path / 'export'})"
            )
        return path / "export"
    return path


def load_source(source: str) -> dict:
    """The params of the source model (an export: ``checkpoint.save_params``'s format).

    Raises:
      ValueError: naming ``adapt.source`` if it is not such a checkpoint.
    """
    path = source_dir(source).absolute()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(path)
    except Exception as e:  # orbax raises various errors for a directory it did not write
        raise ValueError(
            f"adapt.source {source!r}: {path} is not a params export written by `uhn-jax "
            f"export` ({type(e).__name__}: {str(e)[:120]})"
        ) from None
    if not isinstance(params, dict):
        raise ValueError(f"adapt.source {source!r}: {path} does not hold a params tree")
    return params


def source_config(source: str) -> dict | None:
    """The source run's ``config.json`` (of the run directory, or of the run an export sits
    in), or ``None`` when there is none to be found."""
    path = Path(source)
    for candidate in (path / "config.json", path.parent / "config.json"):
        if path.exists() and candidate.is_file():
            try:
                saved = json.loads(candidate.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"adapt.source {source!r}: {candidate} is damaged ({e})") from None
            return saved if isinstance(saved, dict) else None
    return None


def _json(value: Any) -> str:
    return json.dumps(value)


def check_source_config(exp, saved: dict) -> None:
    """``exp`` must rebuild the source run's model (``saved``: its ``config.json``) but for
    the head, and encode its data with the source's vocabulary.

    Raises:
      ValueError: naming the first field that differs.
    """
    src = exp.adapt.source
    model, data = saved.get("model") or {}, saved.get("data") or {}
    for field, value in json.loads(json.dumps(dataclasses.asdict(exp.model))).items():
        if field not in _FREE_MODEL_FIELDS and field in model and model[field] != value:
            raise ValueError(
                f"model.{field} is {value!r} but the source run {src} trained with "
                f"{model[field]!r}: the frozen model keeps the source's architecture"
            )
    name = data.get("name", exp.data.name)
    if name != exp.data.name and exp.data.vocab_from != name:
        raise ValueError(
            f"data.vocab_from must be {name!r} (got {exp.data.vocab_from!r}): the source run "
            f"{src} trained on {name!r}, so {exp.data.name!r} is encoded with {name!r}'s "
            "vocabulary, which the frozen token table reads"
        )
    positions = model.get("max_positions") or data.get("max_len")
    own = exp.model.max_positions or exp.data.max_len
    if positions and own and positions != own:
        raise ValueError(
            f"model.max_positions is {exp.model.max_positions!r} and data.max_len "
            f"{exp.data.max_len!r}, but the source run {src} has {positions} positions: set "
            f"model.max_positions={positions} (data.max_len may be shorter)"
        )
    fields = ["vocab_size"] + (["ag_news_split"] if name == "ag_news" else [])
    for field in fields:
        value = getattr(exp.data, field)
        if field in data and _json(data[field]) != _json(value):
            raise ValueError(
                f"data.{field} is {value!r} but the source run {src} trained with "
                f"{data[field]!r}: the frozen model reads the source's token ids and positions"
            )


# ----------------------------------------------------------------------------- the model


@functools.lru_cache(maxsize=32)
def _shapes(model) -> dict:
    return jax.eval_shape(model.init, jax.random.key(0))


def head_name(setup) -> str:
    """The params key of the classifier head: ``adapt.head``, or the model's last top-level
    params entry in key order (the Transformer's last ``layer_NNN``).

    Raises:
      ValueError: naming ``adapt.head`` if the model has no such entry.
    """
    keys = list(_shapes(setup.model))
    name = setup.adapt.head or keys[-1]
    if name not in keys:
        raise ValueError(f"adapt.head {name!r} is not a top-level params entry; one of {keys}")
    return name


def fit_source(source: dict, shapes: dict, head: str, where: str) -> dict:
    """The source's params but the head, checked leaf by leaf against ``shapes`` (this run's
    model but the head) and cast to their dtypes.

    Raises:
      ValueError: naming the first leaf that is missing, extra or misshapen.
    """
    keystr = jax.tree_util.keystr
    source = {k: v for k, v in source.items() if k != head}
    got = {keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(source)}
    want = {keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(shapes)}
    for path, s in want.items():
        if path not in got:
            problem = f"has no params{path} (shape {tuple(s.shape)} in this run's model)"
        elif tuple(jnp.shape(got[path])) != tuple(s.shape):
            problem = (
                f"params{path} has shape {tuple(jnp.shape(got[path]))}, this run's model "
                f"{tuple(s.shape)}"
            )
        else:
            continue
        raise ValueError(f"adapt.source {where}: the source model {problem}; {_FIT_HINT}")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ValueError(
            f"adapt.source {where}: the source model's params{extra[0]} is not in this run's "
            f"model; {_FIT_HINT}"
        )
    return jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.asarray(got[keystr(p)], s.dtype), shapes
    )


def example_input(model) -> Any:
    """One example input of ``model`` (batch 1) for tracing: token ids for a text model
    (``max_len``), zeros of ``input_shape``, or a Linen ``FlaxModel``'s recorded example.

    Raises:
      ValueError: for a model that declares none of them.
    """
    if getattr(model, "inputs", None) is not None:
        treedef, specs = model.inputs
        return jax.tree_util.tree_unflatten(treedef, [jnp.zeros(s.shape, s.dtype) for s in specs])
    if hasattr(model, "max_len"):
        return jnp.zeros((1, model.max_len), jnp.int32)
    if getattr(model, "input_shape", None) is not None:
        return jnp.zeros((1, *model.input_shape), jnp.float32)
    raise ValueError(
        f"adapt.method='attention' traces one example call of {type(model).__name__}, which "
        "declares neither max_len nor input_shape"
    )


@functools.lru_cache(maxsize=32)
def hypernet(model, settings: attention.Settings) -> attention_attach.AttentionHypernet:
    """The attention hypernetworks attached to every attention layer of ``model``."""
    example = example_input(model)
    args = example if isinstance(example, tuple) else (example,)
    return attention_attach.attach(model, _shapes(model), *args, settings=settings)


def _count(tree) -> int:
    return attention.num_params(tree)


def _save_params(path: Path, params) -> int:
    """Writes ``params`` as a plain orbax checkpoint (an export's format); its bytes."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path.absolute(), params, force=True)
    return attention.size_bytes(path)


# ----------------------------------------------------------------------------- the kind


@dataclasses.dataclass(frozen=True)
class Adapt(base.Kind):
    """A frozen source model adapted by a new head, attention hypernetworks, or fine-tuning;
    see the module docstring."""

    name: str = "adapt"
    config_groups: tuple[str, ...] = ("adapt",)

    def validate(self, exp) -> None:
        if not exp.adapt.source:
            raise ValueError(_NO_SOURCE)
        if exp.model.model_set:
            raise ValueError("model.model_set must be empty with mode=adapt (one source model)")
        saved = source_config(exp.adapt.source)
        if saved is not None:
            check_source_config(exp, saved)

    def init(self, setup, key):
        a = setup.adapt
        head = head_name(setup)
        shapes = {k: v for k, v in _shapes(setup.model).items() if k != head}
        frozen = fit_source(load_source(a.source), shapes, head, repr(a.source))
        k_head, k_pairs = jax.random.split(key)
        new_head = setup.model.init(k_head)[head]
        if a.method == "full":
            return {"model": {**frozen, head: new_head}}, {}
        params = {"head": new_head}
        if a.method == "attention":
            params["attention"] = hypernet(setup.model, a.settings()).init(k_pairs)
        return params, {"frozen": frozen}

    def per_example(self, setup) -> bool:
        return setup.adapt.method == "attention"

    def target_params(self, setup, params, constants, cond):
        if "model" in params:
            return params["model"]
        if "attention" in params:
            raise ValueError(
                "adapt.method='attention' runs the frozen model with attention hypernetworks "
                "attached; no base-model params hold them. A finished run keeps the pairs in "
                f"WORKDIR/{ATTENTION_DIR} and the head in WORKDIR/{HEAD_DIR}, next to the "
                "source export (docs/attention_hypernet.md)"
            )
        return {**constants["frozen"], head_name(setup): params["head"]}

    def forward(self, setup, params, constants, cond, x, *, train=False, rng=None):
        if not self.per_example(setup):
            return super().forward(setup, params, constants, cond, x, train=train, rng=rng)
        settings = setup.adapt.settings()
        model_params = {**constants["frozen"], head_name(setup): params["head"]}
        hyper_rng = None
        if train and rng is not None and settings.dropout_rate:
            hyper_rng = jax.random.fold_in(rng, 1)
        hyper = hypernet(setup.model, settings)
        out = hyper.apply(
            params["attention"], model_params, x, train=train, rng=rng, hyper_rng=hyper_rng
        )
        return out, None

    def num_trained(self, params) -> dict[str, int]:
        out = {"num_trained_params": _count(params)}
        if "head" in params:
            out["num_head_params"] = _count(params["head"])
        if "attention" in params:  # the hypernetwork's trainable params
            out["num_generator_params"] = out["num_attention_params"] = _count(params["attention"])
        return out

    def finish(self, setup, params, constants, workdir) -> dict[str, Any]:
        workdir = Path(workdir)
        out: dict[str, Any] = {
            "adapt_method": setup.adapt.method,
            "adapt_source": setup.adapt.source,
            "num_frozen_params": _count(constants),
        }
        if "head" in params:
            out["head_file_bytes"] = _save_params(workdir / HEAD_DIR, params["head"])
        if "attention" in params:
            settings = setup.adapt.settings()
            path = workdir / ATTENTION_DIR
            out["attention_file_bytes"] = attention.save(path, params["attention"], settings)
        return out


base.register(Adapt())
