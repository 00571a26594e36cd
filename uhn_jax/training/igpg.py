"""Instruction-guided parameter generation on a model zoo (IGPG, issue 26 part 3; docs/igpg.md).

The experiment, in parts, each with its own directory under the workdir ``W``:

* ``W/vqvae/``: a VQ-VAE (:mod:`uhn_jax.weightspace.vqvae`) trained on the weight chunks of
  the training networks (every selected network of the pairs not held out); its
  ``result.json`` holds the reconstruction table: the zoo's test accuracy of each pair's
  networks against that of their encoded-and-decoded copies.
* ``W/prior/``: the prior (:mod:`uhn_jax.weightspace.prior`) trained on the training
  networks' codes, conditioned on dataset images, task and architecture; ``result.json`` has
  its per-token cross-entropy on training and held-out networks.
* ``W/pairs/<dataset>__<architecture>/``: for a seen pair, ``sample.networks`` generated
  networks scored zero-shot on the pair's test split against the zoo's networks; for a
  held-out pair, the same networks, random inits (the base model's) and, when a seen pair of
  the same params layout exists, the best zoo network of the nearest one (by dataset
  encoding), fine-tuned together for each ``k`` of ``finetune.steps``
  (:func:`uhn_jax.training.igpg_fit.finetune`, in ``finetune/``); and for both the novelty
  check (:mod:`uhn_jax.analysis.novelty`).

Every training goes through the one loop in its part's directory, so a killed run resumes,
and a part with a ``result.json`` is skipped by a rerun. ``W/config.json`` holds the config
and the selection; a rerun with another config or another selection (a zoo that gained
groups) is refused, naming what differs. At the end ``W/results.json`` gathers every table
(:mod:`uhn_jax.training.igpg_report`) and the figures are drawn.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from uhn_jax.analysis import novelty
from uhn_jax.core import layouts
from uhn_jax.training import igpg_config as config_lib
from uhn_jax.training import igpg_fit as fit
from uhn_jax.training import igpg_pairs as pairs_lib
from uhn_jax.training import igpg_report as report
from uhn_jax.training import workdir as workdir_lib
from uhn_jax.weightspace import morph
from uhn_jax.weightspace import prior as prior_lib
from uhn_jax.weightspace import zoo as store

validate = config_lib.validate
RESULT = "result.json"


def open_zoo(spec: config_lib.Spec) -> store.Zoo:
    """The zoo of ``spec``.

    Raises:
      ValueError: naming ``allow_partial`` for a partial zoo it does not allow; ``ZooError``
        for a damaged one.
    """
    return store.load_for_config(spec.zoo, spec.allow_partial)


def selection(pairs: dict[str, pairs_lib.Pair]) -> dict[str, Any]:
    """What the experiment trains on: per pair its networks' ids (train and all), hashed."""
    ids = {n: [[r["id"] for r in p.train], [r["id"] for r in p.records]] for n, p in pairs.items()}
    return {
        "pairs": sorted(pairs),
        "digest": hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()[:16],
    }


def check_workdir(workdir: Path, cfg: dict, chosen: dict) -> None:
    """Writes ``config.json`` in a new workdir; refuses one of another config or selection.

    Raises:
      WorkdirError: naming the fields that differ.
    """
    path = workdir / workdir_lib.CONFIG_FILE
    new = {"config": cfg, "selection": chosen}
    if path.exists():
        old = workdir_lib.read_json(path, "Delete the workdir to start over.")
        a, b = workdir_lib.flat(old), workdir_lib.flat(json.loads(json.dumps(new)))
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if differ:
            hint = " (the zoo's records changed)" if any("selection" in k for k in differ) else ""
            raise workdir_lib.WorkdirError(
                f"{workdir} holds an IGPG run of another config or selection (fields differ: "
                f"{', '.join(differ[:8])}){hint}. Use a new --workdir, or delete it to start over."
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(path, json.dumps(new, indent=1) + "\n")


def _read(path: Path) -> dict | None:
    return workdir_lib.read_json(path, "Delete it to redo that part.") if path.exists() else None


def _write(path: Path, value: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(path, json.dumps(value, indent=1) + "\n")
    return value


def slug(name: str) -> str:
    """A pair's directory name: ``digits/mlp-16`` -> ``digits__mlp-16``."""
    return name.replace("/", "__")


class Experiment:
    """One run's state: the zoo's pairs and data, and the VQ-VAE and prior, trained or
    restored when a part first needs them."""

    def __init__(self, spec, zoo, pairs, workdir: Path, progress: bool, log: Callable):
        self.spec, self.zoo, self.pairs, self.workdir = spec, zoo, pairs, workdir
        self.progress, self.log = progress, log
        self.data = pairs_lib.ZooData(zoo)
        self.done: list[str] = []
        self.skipped: list[str] = []
        self._codec = self._prior = self._cond = None
        self._weights: dict[tuple[str, str], np.ndarray] = {}

    @property
    def seen(self) -> list[pairs_lib.Pair]:
        """The pairs the VQ-VAE and the prior train on."""
        return [p for p in self.pairs.values() if p.train]

    def records(self, pair: pairs_lib.Pair, which: str = "train") -> list[dict]:
        """A pair's training networks (``train``; a held-out pair's: all of them), every
        network (``all``), or the training ones capped at ``novelty.max_zoo`` (``zoo``: the
        novelty check's reference networks)."""
        records = pair.records if which == "all" or not pair.train else pair.train
        return records[: self.spec.novelty.max_zoo] if which == "zoo" else records

    def weights(self, pair: pairs_lib.Pair, which: str = "train") -> np.ndarray:
        """``w[M, N]`` of :meth:`records` ``(pair, which)``; with ``select.align_units``,
        the ``train`` networks' hidden units are put in the order of the pair's reference
        network (``zoo`` networks keep theirs: the novelty check aligns them itself)."""
        key = (pair.name, which)
        if key not in self._weights:
            w = pairs_lib.flat(self.zoo, self.records(pair, which))
            if which == "train" and self.spec.select.align_units:
                w = self._aligned(pair, w)
            self._weights[key] = w
        return self._weights[key]

    def _aligned(self, pair: pairs_lib.Pair, w_MN: np.ndarray) -> np.ndarray:
        def tree(w_N):
            return layouts.unflatten(w_N, pair.layout)  # numpy in, numpy out

        ref = tree(pairs_lib.flat(self.zoo, [pair.reference])[0])
        moved = novelty.align_all(
            pair.model, ref, [tree(w) for w in w_MN], iterations=self.spec.novelty.iterations
        )
        return np.stack([np.concatenate([np.ravel(x) for x in jax.tree.leaves(p)]) for p in moved])

    def conditioner(self):
        """The prior's conditioner (image encodings of every pair's dataset), built once."""
        if self._cond is None:
            self._cond = pairs_lib.conditioner(self.pairs, self.data, self.spec)
        return self._cond

    def codec(self):
        """The trained VQ-VAE (trained or restored; its part's result written once)."""
        if self._codec is None:
            start = time.time()
            by_layout: dict = {}
            for p in self.seen:
                by_layout.setdefault(p.layout, []).append(self.weights(p))
            by_layout = {k: np.concatenate(v) for k, v in by_layout.items()}
            part = self.workdir / "vqvae"
            self._codec, info = fit.fit_vqvae(part, self.spec, by_layout, progress=self.progress)
            if _read(part / RESULT) is None:
                rows = [self._reconstruction(p) for p in self.pairs.values()]
                out = {"vqvae": info, "reconstruction": rows, "wall_s": time.time() - start}
                _write(part / RESULT, out)
                self.done.append("vqvae")
                self.log(report.reconstruction_line(out))
        return self._codec

    def _reconstruction(self, pair: pairs_lib.Pair) -> dict[str, Any]:
        records, codec = self.records(pair), self._codec
        if not codec.can_code(pair.layout):  # standardised frames: its architecture unseen
            return {"pair": pair.name, "heldout": pair.heldout, "networks": len(records),
                    "tokens": pair.tokens, "coded": False}  # fmt: skip
        w = self.weights(pair)
        w_hat = codec.decode(codec.encode(w, pair.layout), pair.layout)
        original = self.data.evaluate_records(records, w, pair.layout)
        rebuilt = self.data.evaluate_records(records, w_hat, pair.layout)
        rel = np.linalg.norm(w_hat - w, axis=1) / np.maximum(np.linalg.norm(w, axis=1), 1e-12)
        return {
            "pair": pair.name,
            "heldout": pair.heldout,
            "networks": len(w),
            "tokens": pair.tokens,
            "original_accuracy": original.tolist(),
            "reconstructed_accuracy": rebuilt.tolist(),
            "mean_original": float(original.mean()),
            "mean_reconstructed": float(rebuilt.mean()),
            "mean_drop": float((original - rebuilt).mean()),
            "relative_weight_error": float(rel.mean()),
        }

    def split(self, pair: pairs_lib.Pair) -> tuple[list[int], list[int]]:
        """Indices of a seen pair's training networks that train the prior, and those that
        validate it (``prior.val_fraction`` of them, drawn from the seed and the pair)."""
        m = len(pair.train)
        n_val = min(int(round(self.spec.prior.val_fraction * m)), m - 1)
        rng = np.random.default_rng([self.spec.seed, zlib.crc32(pair.name.encode())])
        order = rng.permutation(m)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    def _sequences(self, pairs: list, side: int | None) -> dict | None:
        """The prior's data of ``pairs``: side 0 (training) or 1 (validation) of each seen
        pair's split, or all of a pair's networks (``None``)."""
        w = {}
        for p in pairs:
            idx = list(range(len(self.records(p)))) if side is None else self.split(p)[side]
            w[p.name] = ([self.records(p)[i] for i in idx], self.weights(p)[idx])
        pairs = [p for p in pairs if len(w[p.name][0])]
        if not pairs:
            return None
        length = max(p.tokens for p in self.pairs.values())  # one shape for every use
        return fit.sequences(self.codec(), pairs, self.conditioner(), w, length)

    def prior(self):
        """``(model, params)`` of the trained prior (trained or restored)."""
        if self._prior is None:
            start = time.time()
            host, val = self._sequences(self.seen, 0), self._sequences(self.seen, 1)
            settings = fit.prior_settings(self.spec, self.conditioner().families)
            part = self.workdir / "prior"
            model, params, chosen = fit.fit_prior(
                part, self.spec, settings, host, val, progress=self.progress
            )
            self._prior = (model, params)
            if _read(part / RESULT) is None:
                out = {**self._prior_result(), **chosen}
                out["sequences"] = len(host["codes"])
                out["validation_sequences"] = 0 if val is None else len(val["codes"])
                out["wall_s"] = time.time() - start
                _write(part / RESULT, out)
                self.done.append("prior")
                self.log(report.prior_line(out))
        return self._prior

    def _prior_result(self) -> dict[str, Any]:
        """The chosen prior's mean per-token NLL per pair and side (``train``, ``val`` of a
        seen pair; ``heldout``: all networks of a held-out pair)."""
        model, params = self._prior
        nll: dict[str, dict[str, float]] = {p.name: {} for p in self.pairs.values()}
        held = [p for p in self.pairs.values() if p.heldout and self.codec().can_code(p.layout)]
        for side, pairs, name in (
            (0, self.seen, "train"),
            (1, self.seen, "val"),
            (None, held, "heldout"),
        ):
            rows = self._sequences(pairs, side) if pairs else None
            if rows is None:
                continue
            values, start = fit.sequence_nll(model, params, rows), 0
            for p in pairs:
                m = len(self.records(p)) if side is None else len(self.split(p)[side])
                if m:
                    nll[p.name][name] = float(values[start : start + m].mean())
                start += m
        return {"params": int(sum(x.size for x in jax.tree.leaves(params))), "nll": nll}

    def grow_source(self, pair: pairs_lib.Pair) -> pairs_lib.Pair | None:
        """The seen pair a held-out ``pair`` is written as (``sample.fallback = "deepen"``),
        or ``None`` (the prior writes ``pair`` itself)."""
        if not pair.heldout or self.spec.sample.fallback != "deepen":
            return None
        return pairs_lib.grow_source(pair, self.pairs)

    def _grown(self, source: pairs_lib.Pair, pair: pairs_lib.Pair, w_MN: np.ndarray):
        """``source`` networks ``w_MN`` deepened into ``pair``'s architecture."""
        a, b = pairs_lib.widths(source), pairs_lib.widths(pair)
        rows = [morph.deepen(layouts.unflatten(w, source.layout), a, b) for w in np.asarray(w_MN)]
        return np.stack([np.asarray(layouts.flatten(t, pair.layout)) for t in rows])

    def generate(self, pair: pairs_lib.Pair) -> np.ndarray:
        """``w[n, N]``: ``sample.networks`` networks generated for ``pair`` (for a held-out
        pair with ``sample.fallback = "deepen"``: generated as its :meth:`grow_source` on its
        dataset, then deepened)."""
        model, params = self.prior()
        s, codec = self.spec.sample, self.codec()
        source = self.grow_source(pair)
        written = pair if source is None else source
        # a grow source is written at the held-out pair's activation slope
        arch = dataclasses.replace(pair.architecture(), layout=written.layout)
        cond = self.conditioner().condition(
            pair.dataset, pair.reference["data"]["num_classes"], arch
        )
        roles = codec.plan(written.layout).roles(self.spec.vqvae.position_buckets)
        key = jax.random.fold_in(jax.random.key(self.spec.seed), zlib.crc32(pair.name.encode()))
        mean = s.decode == "mean"
        drawn = prior_lib.sample(
            model, params, roles, cond, key, s.networks,
            temperature=s.temperature, top_k=s.top_k, probabilities=mean,
        )  # fmt: skip
        if mean:
            w = codec.decode_mean(np.asarray(drawn[1]), written.layout)
        else:
            w = codec.decode(np.asarray(drawn), written.layout)
        return w if source is None else self._grown(source, pair, w)

    def novelty(self, pair: pairs_lib.Pair, generated: np.ndarray) -> dict[str, Any]:
        """:func:`uhn_jax.analysis.novelty.check` of generated networks against the pair's
        training networks (a held-out pair: its zoo networks), at most ``novelty.max_zoo``."""
        n = self.spec.novelty
        records, w = self.records(pair, "zoo"), self.weights(pair, "zoo")

        def trees(w_MN):
            return [layouts.unflatten(x, pair.layout) for x in w_MN]  # numpy: no compilation

        x = self.data.images(pair.reference, "test", n.test_examples)
        out = novelty.check(
            pair.model, trees(generated), trees(w), x, iterations=n.iterations,
            zoo_models=[store.model_of(r) for r in records],
        )  # fmt: skip
        return {"pair": pair.name, "heldout": pair.heldout, **out}

    def run_pair(self, pair: pairs_lib.Pair) -> dict[str, Any]:
        """A pair's part: read back when done before, else computed and written."""
        path = self.workdir / "pairs" / slug(pair.name) / RESULT
        done = _read(path)
        if done is not None:
            self.skipped.append(pair.name)
            return done
        start = time.time()
        generated = self.generate(pair)
        accuracy = self.data.evaluate(pair.reference, generated, pair.layout)
        out = {"pair": pair.name, "heldout": pair.heldout, "generated_accuracy": accuracy.tolist()}
        out["zoo_accuracy"] = pair.accuracies().tolist()
        out["zoo_median"] = float(pair.reference["test_accuracy"])
        source = self.grow_source(pair)
        out["generated_as"] = None if source is None else source.name
        if pair.heldout:
            out["finetune"] = self._finetune(pair, generated, path.parent / "finetune")
        out["novelty"] = self.novelty(pair, generated)
        out["wall_s"] = time.time() - start
        self.done.append(pair.name)
        _write(path, out)
        self.log(report.pair_line(out))
        return out

    def _transfer(self, pair: pairs_lib.Pair) -> tuple[pairs_lib.Pair | None, str]:
        """The nearest seen pair (by dataset encoding) of the same params layout (with
        ``sample.fallback = "deepen"``: the :meth:`grow_source`), or the reason there is
        none."""
        source = self.grow_source(pair)
        if source is not None:
            return source, ""
        same = [p for p in self.seen if p.layout == pair.layout]
        if not same:
            return None, f"no seen pair has the params layout of {pair.name}"
        cond = self.conditioner()
        target = cond.dataset(pair.dataset)
        return min(same, key=lambda p: float(np.linalg.norm(cond.dataset(p.dataset) - target))), ""

    def _finetune(self, pair: pairs_lib.Pair, generated: np.ndarray, part: Path) -> dict:
        n = len(generated)
        model = pair.model
        keys = jax.random.split(jax.random.fold_in(jax.random.key(self.spec.seed), 7), n)
        inits = jax.jit(jax.vmap(lambda k: layouts.flatten(model.init(k), pair.layout)))
        random = np.asarray(inits(keys))
        starts = {"generated": generated, "random": random}
        source, reason = self._transfer(pair)
        if source is not None:
            slope = pair.reference.get("slope", 0.0)  # prefer the held-out pair's slope
            pool = [r for r in source.records if r.get("slope", 0.0) == slope]
            best = max(pool or source.records, key=lambda r: (r["test_accuracy"], r["id"]))
            w = pairs_lib.flat(self.zoo, [best])
            starts["transfer"] = w if source.layout == pair.layout else self._grown(source, pair, w)
        names = list(starts)
        acc = fit.finetune(
            part, self.data, pair, np.concatenate(list(starts.values())), self.spec,
            progress=self.progress,
        )  # fmt: skip
        out, start = {"steps": list(self.spec.finetune.steps)}, 0
        for name in names:
            m = len(starts[name])
            out[name] = acc[start : start + m].tolist()
            start += m
        out["transfer_from"] = source.name if source is not None else None
        out["transfer_reason"] = reason
        return out


def run(config, workdir: str | Path, progress: bool = True, log: Callable = print) -> dict:
    """Runs (or continues) the IGPG experiment of ``config`` (``configs/igpg.py``) in
    ``workdir``; returns the results (``results.json``) plus the parts this call computed
    (``done``) and skipped (``skipped``).

    Raises:
      ValueError: for a bad config (naming the field), a partial zoo not allowed, a held-out
        pair the zoo does not have, before anything trains.
      WorkdirError: for a workdir holding a run of another config or selection.
    """
    start = time.time()
    cfg = config_lib.as_dict(config)
    spec = validate(cfg)
    zoo = open_zoo(spec)
    pairs, excluded = pairs_lib.select(zoo, spec)
    path = Path(workdir)
    check_workdir(path, cfg, selection(pairs))
    ex = Experiment(spec, zoo, pairs, path, progress, log)
    ordered = [p for p in pairs.values() if p.train] + [p for p in pairs.values() if p.heldout]
    todo = [p for p in ordered if _read(path / "pairs" / slug(p.name) / RESULT) is None]
    if todo or _read(path / "vqvae" / RESULT) is None:
        ex.codec()
    if todo or _read(path / "prior" / RESULT) is None:
        ex.prior()
    rows = [ex.run_pair(p) for p in ordered]
    vq, pr = _read(path / "vqvae" / RESULT), _read(path / "prior" / RESULT)
    for part in ("vqvae", "prior"):
        if part not in ex.done:
            ex.skipped.append(part)
    results = report.results(spec, ex, excluded, rows, vq, pr, time.time() - start)
    _write(path / "results.json", results)
    report.figures(results, path)
    log(report.summary(results, path))
    return {**results, "done": ex.done, "skipped": ex.skipped}
