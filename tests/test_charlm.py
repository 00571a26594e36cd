"""Character-level language modelling through the one loop: the ``mr_chars`` dataset, the
``language_modeling`` task (bits per character) and the LSTM / LN-LSTM / HyperLSTM families."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config, real_data_dir

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


@pytest.mark.parametrize("cell", ["hyperlstm"])
def test_a_char_lm_trains_on_real_mr_and_reports_bpc(cell, tmp_path):
    data_dir = real_data_dir("rt_polarity").parent
    cfg = load_config("mr_charlm", cell)
    cfg.data.data_dir, cfg.data.max_len = str(data_dir), 20
    cfg.model.widths, cfg.model.embed_dim = (16,), 8
    cfg.train.steps, cfg.train.warmup_steps, cfg.train.log_every = 3, 0, 1
    cfg.train.eval_batch_size = 4096
    results = uhn_jax.run(uhn_jax.from_config_dict(cfg), tmp_path, progress=False)
    assert results["metric_name"] == "bpc" and results["task"] == "char_lm"
    # Three steps from a uniform start: about log2(65) = 6.0 bits, finite and positive.
    assert 3.0 < results["test_metric"] < 7.0, results
