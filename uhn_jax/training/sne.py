"""Predicting a network's test accuracy from its weights (``uhn-jax sne``): SNE against its
baselines on a model zoo, per task and seed (issue 26, part 2; docs/sne.md).

For each task of the config (:mod:`uhn_jax.training.sne_config`; its split by network,
:mod:`uhn_jax.weightspace.splits`), each seed and each method, a *part* trains in its own
workdir ``W/runs/<task>/<method>/seed_<s>/``:

* ``sne``: :class:`uhn_jax.weightspace.sne.SNE` on the networks' tokens
  (:mod:`uhn_jax.weightspace.chunking`);
* ``stats_mlp`` / ``stats_gbt``: an MLP / gradient-boosted trees on weight statistics
  (:mod:`uhn_jax.weightspace.statistics`);
* ``flat_mlp``: an MLP on the flattened weights, for tasks whose networks share one layout
  (any other task records the method as not applicable, with the reason).

The neural predictors train through the one loop (:mod:`uhn_jax.training.predictor`), so a
killed part resumes from its checkpoint; a finished part has ``result.json`` (its scores, its
test predictions) and is skipped by a rerun, which checks that the part's config and split are
still the ones it was trained with. When every part is done, ``W/results.json`` holds the
table (task x method: Kendall's tau and MSE on the test side, mean and std over seeds, sizes,
wall time) and ``W/sne_scatter.png`` SNE's predicted against true test accuracy per task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uhn_jax.training import predictor
from uhn_jax.training import sne_config as config_lib
from uhn_jax.training import sne_report as report
from uhn_jax.training import workdir as workdir_lib
from uhn_jax.weightspace import chunking, sne, splits, statistics
from uhn_jax.weightspace import zoo as store

validate = config_lib.validate
RUNS_DIR = "runs"
PART_RESULT = "result.json"
#: The methods trained by the predictor loop (``stats_gbt`` fits in one call).
NEURAL = ("sne", "stats_mlp", "flat_mlp")


def open_zoo(spec: config_lib.Spec) -> tuple[store.Zoo, list[dict]]:
    """The zoo and its records at the config's snapshots.

    Raises:
      ValueError: naming ``allow_partial`` for a partial zoo it does not allow, ``snapshots``
        when no record is at those snapshots; ``ZooError`` for a damaged zoo.
    """
    zoo = store.load_for_config(spec.zoo, spec.allow_partial)
    records = [
        r
        for r in zoo.records
        if (not spec.snapshots or r["snapshot"] in spec.snapshots)
        and r.get("test_accuracy") is not None
    ]
    if not records:
        raise ValueError(
            f"snapshots={list(spec.snapshots)}: no record of the zoo at {spec.zoo} is at these "
            "snapshots (a record's 'snapshot' is its index, 0 = the first)"
        )
    return zoo, records


class Features:
    """Every method's per-record inputs, computed once per call (in zoo order, each group
    opened once): SNE's tokens, the weight statistics, and flattened weights on demand."""

    def __init__(self, spec: config_lib.Spec, zoo: store.Zoo, records: list[dict], log):
        self.spec, self.zoo, self.records, self.log = spec, zoo, records, log
        self.tokens: dict[int, chunking.Tokens] = {}
        self.stats: dict[int, np.ndarray] = {}
        self._layouts: dict[str, Any] = {}

    def layouts(self, idx) -> set:
        """The distinct params layouts of records ``idx`` (one model rebuilt per group)."""
        for i in idx:
            group = self.records[i]["group"]
            if group not in self._layouts:
                self._layouts[group] = store.layout_of(self.records[i])
        return {self._layouts[self.records[i]["group"]] for i in idx}

    def _params(self, idx):
        for n, i in enumerate(sorted(idx)):
            if n and n % 500 == 0:
                self.log(f"[sne] features: {n}/{len(idx)} networks read")
            yield i, self.zoo.params(self.records[i])

    def prepare(self, tokens, stats) -> None:
        """SNE's tokens of records ``tokens`` and the statistics of records ``stats``, in one
        pass over the zoo.

        Raises:
          ValueError: for a network SNE cannot take (too many tokens in a layer, naming
            ``chunking.max_tokens_per_layer``; too many layers or classes, naming ``sne.*``).
        """
        tokens, stats = set(tokens) - set(self.tokens), set(stats) - set(self.stats)
        for i, params in self._params(tokens | stats):
            if i in stats:
                self.stats[i] = statistics.features(params)
            if i in tokens:
                self.tokens[i] = self._tokenize(i, params)

    def _tokenize(self, i: int, params) -> chunking.Tokens:
        s, r = self.spec, self.records[i]
        try:
            tokens = chunking.tokenize(
                params, s.chunk_size, max_tokens_per_layer=s.max_tokens_per_layer
            )
        except ValueError as e:  # a layer over chunking.max_tokens_per_layer, or unreadable
            raise ValueError(f"record {r['id']}: {e}") from None
        if tokens.num_layers > s.sne.max_layers:
            raise ValueError(
                f"sne.max_layers={s.sne.max_layers}: record {r['id']} has {tokens.num_layers} "
                "layers; raise it"
            )
        if int(tokens.label.max()) > s.sne.max_classes:
            raise ValueError(
                f"sne.max_classes={s.sne.max_classes}: record {r['id']} has "
                f"{int(tokens.label.max())} classes; raise it"
            )
        return tokens

    def flat(self, idx) -> np.ndarray:
        """``[len(idx), N]``: the flattened weights of records ``idx`` (one layout)."""
        params = dict(self._params(idx))
        names = [self.records[i]["id"] for i in idx]
        return statistics.flat_weights([params[i] for i in idx], names)


def _targets(records: list[dict], idx) -> np.ndarray:
    return np.asarray([records[i]["test_accuracy"] for i in idx], np.float32)


def _inputs(method: str, feats: Features, split: splits.Split):
    """``(model, {side: Inputs})`` of a neural method (or ``(None, {side: (x, y)})`` for
    ``stats_gbt``); a side without records is ``None``."""
    spec, records = feats.spec, feats.records
    sides = {"train": split.train, "val": split.val, "test": split.test}
    if method == "sne":
        values = np.concatenate([feats.tokens[i].values.reshape(-1) for i in split.train])
        scale = float(1.0 / max(np.sqrt(np.mean(values.astype(np.float64) ** 2)), 1e-8))
        norm = None
        if spec.sne.network_size:
            norm = sne.size_norm([chunking.network_size(feats.tokens[i]) for i in split.train])

        def sne_inputs(idx):
            toks = [feats.tokens[i] for i in idx]
            make = _collate(toks, spec.sne, scale, norm)
            sizes = np.asarray([t.num_tokens for t in toks])
            return predictor.Inputs(_targets(records, idx), make, sizes)

        out = {k: sne_inputs(v) if v else None for k, v in sides.items()}
        return sne.SNE(spec.sne), out
    if method == "flat_mlp":
        everything = [i for v in sides.values() for i in v]
        x_all = dict(zip(everything, feats.flat(everything), strict=True))
    else:
        x_all = feats.stats
    standardize = statistics.Standardizer.fit(np.stack([x_all[i] for i in split.train]))
    arrays = {
        k: (standardize(np.stack([x_all[i] for i in v])), _targets(records, v))
        for k, v in sides.items()
        if v
    }
    if method == "stats_gbt":
        return None, arrays
    out = {k: None for k in sides}
    for k, (x, y) in arrays.items():
        out[k] = predictor.Inputs(y, lambda idx, x=x: {"x": x[idx]})
    return statistics.FeatureMLP(spec.mlp_hidden), out


def _collate(toks: list[chunking.Tokens], s: sne.Settings, scale: float, norm=None) -> Callable:
    def make(idx):
        batch = [toks[i] for i in idx]
        out = chunking.collate(
            batch, max_layers=s.max_layers, max_classes=s.max_classes, scale=scale
        )
        return sne.with_size_norm(out, norm) if norm is not None else out

    return make


def score(pred: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Kendall's tau (``None`` when undefined: constant predictions or targets) and MSE."""
    mse, tau = predictor.mse_and_tau(pred, y)
    return {"kendall_tau": tau if np.isfinite(tau) else None, "mse": mse}


def split_digest(records: list[dict], split: splits.Split) -> str:
    """The sha256 of the record ids on each side: a part is tied to its split."""
    ids = {
        side: [records[i]["id"] for i in getattr(split, side)] for side in ("train", "val", "test")
    }
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def part_config(spec, task, method: str, seed: int, digest: str) -> dict[str, Any]:
    """What a part reads: the zoo, its task and split, the seed and its method's settings."""
    settings: dict[str, Any] = {}
    if method == "sne":
        settings = {"chunk_size": spec.chunk_size, "sne": spec.sne.__dict__}
    if method in ("stats_mlp", "flat_mlp"):
        settings = {"mlp_hidden": list(spec.mlp_hidden)}
    if method == "stats_gbt":
        settings = {"gbt": spec.gbt.__dict__}
    if method in NEURAL:
        settings["train"] = spec.train.__dict__
    cfg = {"zoo": str(spec.zoo), "task": task.describe(), "split": digest, "seed": seed}
    return json.loads(
        json.dumps({**cfg, "val_fraction": spec.val_fraction, "method": method, **settings})
    )


#: The settings dataclasses of :func:`part_config`'s groups.
_SETTINGS = {"sne": sne.Settings, "gbt": statistics.GbtSettings, "train": predictor.Settings}


def _check_part(part: Path, cfg: dict) -> None:
    """Refuses a part workdir trained with another config or split, naming the fields."""
    saved = part / workdir_lib.CONFIG_FILE
    if not saved.exists():
        return
    old = workdir_lib.flat(workdir_lib.read_json(saved, "Delete the part's directory to redo it."))
    # A part saved before a settings field existed was trained without it: its default.
    defaults = {k: dataclasses.asdict(v()) for k, v in _SETTINGS.items() if k in cfg}
    old = {**workdir_lib.flat(defaults), **old}
    new = workdir_lib.flat(cfg)
    differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if differ:
        hint = (
            " (the zoo's records changed: e.g. more groups completed)" if "split" in differ else ""
        )
        raise workdir_lib.WorkdirError(
            f"{part} was trained with another config (fields differ: {', '.join(differ)}){hint}. "
            "Use a new --workdir, or delete that directory to redo the part."
        )


def _fit_part(feats: Features, split, method: str, seed: int, part: Path, ctx: dict):
    """Trains one part; returns ``(test predictions or None if the budget stopped it, fit
    info, steps taken)``."""
    spec = feats.spec
    model, inputs = _inputs(method, feats, split)
    if method == "stats_gbt":
        x, y = inputs["train"]
        if "val" in inputs:  # no model choice: the validation networks train too
            x, y = np.concatenate([x, inputs["val"][0]]), np.concatenate([y, inputs["val"][1]])
        gbt = statistics.fit_gbt(x, y, spec.gbt, seed)
        return gbt.predict(inputs["test"][0]).astype(np.float32), {"steps": gbt.n_iter_}, 0
    fit = predictor.fit(
        part,
        model,
        spec.train,
        inputs["train"],
        inputs["val"],
        seed,
        progress=ctx["progress"],
        desc=f"{part.parent.parent.name} {method} seed {seed}",
        budget=ctx["budget"],
    )
    if not fit.finished:
        return None, {}, fit.taken
    pred = predictor.predict(model, fit.params, inputs["test"], spec.train.eval_batch_size)
    info = {"steps": spec.train.steps, "chosen_step": fit.step, "val_mse": fit.val_mse}
    info["val_tau"] = fit.val_tau
    info["num_params"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(fit.params)))
    return pred, info, fit.taken


def run_part(feats: Features, task, split, method: str, seed: int, ctx: dict):
    """One (task, method, seed): its result (read back when finished before, ``None`` when
    the budget stopped it) and the steps it took."""
    spec, records = feats.spec, feats.records
    part = Path(ctx["workdir"]) / RUNS_DIR / part_name(task.name, method, seed)
    cfg = part_config(spec, task, method, seed, split_digest(records, split))
    _check_part(part, cfg)
    if (part / PART_RESULT).exists():
        return workdir_lib.read_json(part / PART_RESULT, "Delete it to redo the part."), 0
    part.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(part / workdir_lib.CONFIG_FILE, json.dumps(cfg, indent=1) + "\n")
    head = {"task": task.name, "method": method, "seed": seed, **split.sizes(records)}
    layouts = feats.layouts([*split.train, *split.val, *split.test]) if method == "flat_mlp" else ()
    if len(layouts) > 1:
        reason = (
            f"flat_mlp needs networks of one layout; this task's have {len(layouts)} "
            "(set the task's widths and families to one architecture)"
        )
        out = {**head, "status": "not_applicable", "reason": reason}
        workdir_lib.write_atomic(part / PART_RESULT, json.dumps(out, indent=1) + "\n")
        return out, 0
    start = time.time()
    pred, info, taken = _fit_part(feats, split, method, seed, part, ctx)
    if pred is None:
        return None, taken
    y = _targets(records, split.test)
    out = {**head, "status": "done", **score(pred, y), **info}
    out["wall_s"] = round(time.time() - start, 2)
    out["test_ids"] = [records[i]["id"] for i in split.test]
    out["predictions"], out["targets"] = pred.tolist(), y.tolist()
    workdir_lib.write_atomic(part / PART_RESULT, json.dumps(out, indent=1) + "\n")
    if not spec.keep_checkpoints:
        shutil.rmtree(part / "checkpoints", ignore_errors=True)
    return out, taken


def _plan(spec, records) -> list[tuple[Any, splits.Split, str, int]]:
    """Every part, ``(task, split, method, seed)``; the splits drawn (and checked) first."""
    parts = []
    for task in spec.tasks:
        for seed in spec.seeds:
            split = splits.make_split(records, task, seed, spec.val_fraction)
            parts += [(task, split, method, seed) for method in spec.methods]
    return parts


def part_name(task: str, method: str, seed: int) -> str:
    """``<task>/<method>/seed_<s>``: a part's directory under ``W/runs``."""
    return f"{task}/{method}/seed_{seed}"


def part_results(workdir: str | Path, out: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``result.json`` of each finished part of ``out["runs"]`` (:func:`run`'s results, or
    ``W/results.json``), with its test ``predictions``, ``targets`` and ``test_ids``: what
    :func:`uhn_jax.training.sne_report.figure` draws."""
    return [
        workdir_lib.read_json(
            Path(workdir) / RUNS_DIR / part_name(r["task"], r["method"], r["seed"]) / PART_RESULT,
            "Rerun the command to redo the part.",
        )
        for r in out["runs"]
        if r["status"] == "done"
    ]


def _prepare(feats: Features, parts, workdir: Path) -> set[str]:
    """The names of the unfinished parts; every input they need computed (before anything
    trains, so a network SNE cannot take is refused first)."""
    todo = {
        part_name(t.name, m, seed): (s, m)
        for t, s, m, seed in parts
        if not (workdir / RUNS_DIR / part_name(t.name, m, seed) / PART_RESULT).exists()
    }
    needs: dict[str, set[int]] = {"sne": set(), "stats": set()}
    for split, method in todo.values():
        kind = "sne" if method == "sne" else "stats" if method.startswith("stats") else None
        if kind:
            needs[kind] |= {*split.train, *split.val, *split.test}
    feats.prepare(needs["sne"], needs["stats"])
    return set(todo)


def run(
    cfg,
    workdir: str | Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs (or continues) the SNE experiment of ``cfg`` (``configs/sne.py``) in ``workdir``.

    Args:
      cfg: an SNE config (ConfigDict or mapping), checked by :func:`validate`.
      workdir: ``runs/<task>/<method>/seed_<s>/`` per part, ``results.json``, the figure.
      progress: show each part's progress bar.
      stop_after: stop (checkpointed) after this many training steps in this call, summed
        over parts (for tests, and to run in slices).
      log: where the progress lines go.

    Returns:
      The results (:func:`uhn_jax.training.sne_report.results`), plus ``trained`` (the parts
      this call trained, ``task/method/seed``) and ``skipped`` (those finished before).

    Raises:
      ValueError: for a bad config, a partial zoo not allowed, an unknown dataset or family
        of a task or an empty split (naming the field), before anything trains.
    """
    spec = validate(cfg)
    workdir = Path(workdir)
    zoo, records = open_zoo(spec)
    parts = _plan(spec, records)
    feats = Features(spec, zoo, records, log)
    todo = _prepare(feats, parts, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(
        workdir / workdir_lib.CONFIG_FILE, json.dumps(config_lib.as_dict(cfg), indent=1) + "\n"
    )
    ctx = {"workdir": workdir, "progress": progress, "budget": stop_after}
    done, trained, skipped = [], [], []
    for n, (task, split, method, seed) in enumerate(parts):
        name = part_name(task.name, method, seed)
        if name in todo and ctx["budget"] is not None and ctx["budget"] <= 0:
            break
        out, taken = run_part(feats, task, split, method, seed, ctx)
        ctx["budget"] = None if ctx["budget"] is None else ctx["budget"] - taken
        (trained if name in todo else skipped).append(name)
        if out is None:  # the budget stopped it
            break
        if name in todo:
            log(report.part_line(n, len(parts), out))
        done.append(out)
    results = report.results(spec, zoo, records, parts, done, complete=len(done) == len(parts))
    report.write(workdir, results, done)
    return {**results, "trained": trained, "skipped": skipped}
