"""Character-level language modelling through the one loop: the ``mr_chars`` dataset, the
``language_modeling`` task (bits per character) and the LSTM / LN-LSTM / HyperLSTM families."""

import math

import jax.numpy as jnp
import numpy as np
import optax
from conftest import load_config

import uhn_jax
from uhn_jax.training import tasks


def test_language_modelling_terms_are_the_mean_cross_entropy_and_its_bits():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    y = jnp.asarray([[0, 1, 2], [4, 4, 3]])
    loss, score = tasks.example_terms("language_modeling", logits, y)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(axis=1)
    np.testing.assert_allclose(loss, ce, rtol=1e-6)
    np.testing.assert_allclose(score, ce / math.log(2), rtol=1e-6)
    assert tasks.metric_name("language_modeling") == "bpc"


def test_a_hyperlstm_char_lm_runs_in_the_loop_and_reports_bpc(tmp_path):
    # MR-format files of a few thousand characters (the real corpus is tested in
    # test_hyperlstm; a full evaluation of its test split takes a minute here).
    rng = np.random.default_rng(0)
    words = ("good", "bad", "plot", "actors", "a", "film", "the", "!", ",")
    for fname in ("rt-polarity.pos", "rt-polarity.neg"):
        lines = [" ".join(rng.choice(words, 5)) for _ in range(300)]
        (tmp_path / fname).write_text("\n".join(lines) + "\n")
    cfg = load_config("mr_charlm", "hyperlstm")
    cfg.data.data_dir, cfg.data.max_len = str(tmp_path), 20
    cfg.model.widths, cfg.model.embed_dim = (16,), 8
    cfg.train.steps, cfg.train.warmup_steps, cfg.train.log_every = 3, 0, 1
    cfg.train.eval_batch_size = 4096
    results = uhn_jax.run(uhn_jax.from_config_dict(cfg), tmp_path / "run", progress=False)
    assert results["metric_name"] == "bpc" and results["task"] == "char_lm"
    assert results["model"] == "hyperlstm-16"
    # Three steps from a near-uniform start over the corpus' characters: about log2(vocab).
    vocab = len(set("".join(("good", "bad", "plot", "actors", "a", "film", "the", "!", ",")))) + 3
    assert 0.5 * np.log2(vocab) < results["test_metric"] < 1.5 * np.log2(vocab), results
