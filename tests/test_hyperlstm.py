"""HyperLSTM, LN-LSTM, CharLM (uhn_jax.models.hyperlstm); MR characters (uhn_jax.data.chars)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import real_data_dir

from uhn_jax.data import chars, files
from uhn_jax.models import hyperlstm as hl

B, T, D, H, HYPER, NZ = 2, 5, 3, 8, 6, 4


def _cell(name):
    return hl.make_cell(name, H, hyper_features=HYPER, embed_features=NZ)


# --- cells ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", hl.CELLS)
def test_cells_run_under_nn_rnn_with_the_documented_carry(name):
    x = jax.random.normal(jax.random.key(0), (B, T, D))
    rnn = nn.RNN(_cell(name), return_carry=True)
    params = rnn.init(jax.random.key(1), x)
    carry, y = rnn.apply(params, x)
    assert y.shape == (B, T, H)
    shapes = [a.shape for a in carry]
    expected = [(B, H), (B, H)] + ([(B, HYPER), (B, HYPER)] if name == "hyperlstm" else [])
    assert shapes == expected
    assert [a.shape for a in _cell(name).initialize_carry(jax.random.key(2), (B, D))] == expected
    assert _cell(name).num_feature_axes == 1
    # The output sequence is the main hidden state: its last step is the carry's h.
    np.testing.assert_allclose(y[:, -1], carry[1], atol=1e-6)


def test_layernorm_lstm_has_the_hand_counted_parameters():
    # 4 gates x (W_x, W_h, bias), a gain per gate unit in LN(W_x x) and LN(W_h h), LN(c)'s 2 H.
    expected = 4 * (D * H + H * H + H) + 2 * 4 * H + 2 * H
    count = hl.param_count(hl.LayerNormLSTMCell(H), (jnp.zeros((1, H)),) * 2, jnp.zeros((1, D)))
    assert count == expected


def _one_hyper_step(params=None):
    cell = hl.HyperLSTMCell(16, hyper_features=8, embed_features=NZ)
    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (4, D))
    carry = tuple(jax.random.normal(keys[1], (4, n)) for n in (16, 16, 8, 8))
    params = cell.init(keys[2], carry, x) if params is None else params
    _, state = cell.apply(params, carry, x, mutable=["intermediates"])
    return params, {k: v[0] for k, v in state["intermediates"].items()}


def test_hyperlstm_scales_start_near_one_and_the_dynamic_bias_near_zero():
    _, d = _one_hyper_step()
    assert d["d_x"].shape == d["d_h"].shape == d["d_b"].shape == (4, 4, 16)
    for name in ("d_x", "d_h"):
        assert abs(float(d[name].mean()) - 1.0) < 0.02, name
        # A small spread, but not none: a constant d would be a no-op under layer norm.
        assert 0.005 < float(d[name].std()) < 0.06, name
    assert float(jnp.abs(d["d_b"]).max()) < 0.05


def _hyper_and_ln_outputs(const_scales: bool):
    x = jax.random.normal(jax.random.key(4), (B, T, D))
    hyper = nn.RNN(_cell("hyperlstm"))
    params = hyper.init(jax.random.key(5), x)
    if const_scales:
        p = params["params"]["cell"]
        p["embed_x"]["kernel"] = jnp.full_like(p["embed_x"]["kernel"], 1.0 / NZ)
        p["embed_h"]["kernel"] = jnp.full_like(p["embed_h"]["kernel"], 1.0 / NZ)
        p["embed_b"]["kernel"] = jnp.zeros_like(p["embed_b"]["kernel"])
    ln_params = {"params": {"cell": params["params"]["cell"]["main"]}}
    return hyper.apply(params, x), nn.RNN(_cell("layernorm_lstm")).apply(ln_params, x)


def test_hyperlstm_with_gate_uniform_scales_is_exactly_its_layernorm_lstm():
    # d uniform within each gate is undone by layer norm, and d_b = 0: the main LSTM is an LN-LSTM.
    y_hyper, y_ln = _hyper_and_ln_outputs(const_scales=True)
    np.testing.assert_allclose(y_hyper, y_ln, atol=1e-5)


def test_hyperlstm_at_init_steps_like_its_layernorm_lstm():
    # From the same state, one step differs only by the few-percent spread of d around 1.
    keys = jax.random.split(jax.random.key(8), 3)
    x = jax.random.normal(keys[0], (4, D))
    carry = tuple(jax.random.normal(keys[1], (4, n)) for n in (H, H, HYPER, HYPER))
    params = _cell("hyperlstm").init(keys[2], carry, x)
    (c, h, _, _), _ = _cell("hyperlstm").apply(params, carry, x)
    ln_params = {"params": params["params"]["main"]}
    (c_ln, h_ln), _ = _cell("layernorm_lstm").apply(ln_params, carry[:2], x)
    diff = float(jnp.abs(h - h_ln).max())
    assert 0.0 < diff < 0.05, diff
    assert float(jnp.abs(c - c_ln).max()) < 0.05


@pytest.mark.parametrize("name", hl.CELLS)
def test_gradients_reach_every_parameter(name):
    model = hl.CharLM(11, H, cell=name, embed_dim=4, hyper_features=HYPER, embed_features=NZ)
    tokens = jax.random.randint(jax.random.key(6), (B, T + 1), 0, 11)
    params = model.init(jax.random.key(7), tokens[:, :-1])["params"]
    grads = jax.grad(lambda p: hl.bpc(model.apply({"params": p}, tokens[:, :-1]), tokens[:, 1:]))(
        params
    )
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not float(jnp.abs(g).max()) > 0]
    assert not dead, dead


def test_make_cell_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="hyperlstm"):
        hl.make_cell("gru", 4)


# --- parameter matching and bpc -------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "layernorm_lstm"])
def test_matched_features_gives_the_same_parameter_count_within_one_percent(cell):
    hyper = hl.CharLM(65, 128, embed_dim=32, hyper_features=32, embed_features=8)
    target = hl.charlm_param_count(hyper)
    h = hl.matched_features(hyper, cell)

    def gap(features):
        return abs(hl.charlm_param_count(hyper.clone(cell=cell, features=features)) - target)

    assert h > 128  # the hypernetwork's own parameters buy the baseline extra units
    assert gap(h) / target < 0.01
    assert gap(h) <= min(gap(h - 1), gap(h + 1))  # and it is the nearest size


def test_bpc_is_cross_entropy_in_bits_over_unmasked_positions():
    vocab = 8
    uniform = jnp.zeros((2, 3, vocab))
    targets = jnp.zeros((2, 3), jnp.int32)
    np.testing.assert_allclose(hl.bpc(uniform, targets), math.log2(vocab), rtol=1e-6)
    # A confident correct position (0 bits) and a uniform one (3 bits); mask drops the third.
    logits = jnp.stack([jnp.eye(vocab)[0] * 1e4, jnp.zeros(vocab), jnp.eye(vocab)[0] * -1e4])
    mask = jnp.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(hl.bpc(logits, jnp.zeros(3, jnp.int32), mask), 1.5, rtol=1e-6)


# --- character data -------------------------------------------------------------------------


def test_interleave_split_alternates_pos_and_neg_and_holds_out_the_last_lines():
    pos, neg = [f"p{i}" for i in range(6)], [f"n{i}" for i in range(4)]
    train, test = chars.interleave_split(pos, neg, test_fraction=0.2)
    assert train == ["p0", "n0", "p1", "n1", "p2", "n2", "p3", "n3"]
    assert test == ["p4", "p5"]


def test_vocabulary_and_encoding_map_rare_characters_to_unk():
    vocab = chars.build_vocab("aaabbc", min_count=2)
    assert vocab == (chars.UNK, "a", "b")
    np.testing.assert_array_equal(chars.encode("abcz", vocab), [1, 2, 0, 0])


def test_train_batches_are_a_function_of_seed_and_step():
    ids = np.arange(1000, dtype=np.int32)
    batch = chars.train_batch(ids, seed=1, step=7, batch_size=4, seq_len=10)
    assert batch.shape == (4, 11) and batch.dtype == np.int32
    np.testing.assert_array_equal(batch, chars.train_batch(ids, 1, 7, 4, 10))
    assert not np.array_equal(batch, chars.train_batch(ids, 1, 8, 4, 10))
    assert not np.array_equal(batch, chars.train_batch(ids, 2, 7, 4, 10))
    # Each row is a window of consecutive ids.
    np.testing.assert_array_equal(np.diff(batch, axis=1), 1)


def test_eval_batches_cover_every_target_exactly_once():
    ids = np.arange(1, 24, dtype=np.int32)  # 23 ids, 22 targets
    seen = []
    for windows, mask in chars.eval_batches(ids, seq_len=5, batch_size=2):
        assert windows.shape == (2, 6) and mask.shape == (2, 5)
        seen += list(windows[:, 1:][mask > 0])
        # Inputs and targets of a window are consecutive.
        np.testing.assert_array_equal(windows[mask[:, 0] > 0, 1], windows[mask[:, 0] > 0, 0] + 1)
    assert seen == list(ids[1:])


def test_missing_files_raise_an_error_naming_them(tmp_path):
    with pytest.raises(files.MissingDataError, match="rt-polarity.pos.*rt-polarity.neg"):
        chars.load_mr_chars(tmp_path / "nowhere")
    (tmp_path / "rt-polarity.pos").write_text("good\n")
    with pytest.raises(files.MissingDataError, match="`rt-polarity.neg`"):
        chars.load_mr_chars(tmp_path)


def test_small_corpus_loads_from_the_rt_polarity_subdirectory(tmp_path):
    (tmp_path / "rt_polarity").mkdir()
    for name, lines in (("pos", "ab\n" * 9 + "zz\n"), ("neg", "ba\n" * 10)):
        (tmp_path / "rt_polarity" / f"rt-polarity.{name}").write_bytes(lines.encode("latin-1"))
    data = chars.load_mr_chars(tmp_path, min_count=2)
    assert data.vocab == (chars.UNK, "\n", "a", "b")
    assert data.decode(data.train[:6]) == "ab\nba\n"
    assert data.decode(data.test) == "<unk><unk>\nba\n"  # "zz" is the last pos line, unseen


@pytest.fixture(scope="module")
def mr_chars():
    return chars.load_mr_chars(real_data_dir("rt_polarity"))


def test_real_mr_chars_split_is_fixed_and_covers_the_vocabulary(mr_chars):
    again = chars.load_mr_chars(real_data_dir("rt_polarity"))
    assert again.vocab == mr_chars.vocab
    np.testing.assert_array_equal(again.train, mr_chars.train)
    np.testing.assert_array_equal(again.test, mr_chars.test)
    newline = mr_chars.vocab.index("\n")
    assert (mr_chars.train == newline).sum() == 9596 and (mr_chars.test == newline).sum() == 1066
    # Every character of the vocabulary occurs in training, and every id is in range.
    assert set(np.unique(mr_chars.train)) >= set(range(1, mr_chars.vocab_size))
    assert mr_chars.test.max() < mr_chars.vocab_size
    assert set("abcdefghijklmnopqrstuvwxyz .,'") <= set(mr_chars.vocab)
    assert mr_chars.decode(mr_chars.test[:9]) == "lovingly "


@pytest.mark.slow
def test_real_hyperlstm_charlm_learns_mr_characters(mr_chars):
    ids = mr_chars.train[:20_000]
    model = hl.CharLM(mr_chars.vocab_size, 32, embed_dim=16, hyper_features=16, embed_features=4)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    opt = optax.adam(2e-2)

    @jax.jit
    def step(params, opt_state, batch):
        loss_fn = lambda p: hl.bpc(model.apply({"params": p}, batch[:, :-1]), batch[:, 1:])  # noqa: E731
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = opt.init(params), []
    for t in range(150):
        batch = jnp.asarray(chars.train_batch(ids, seed=0, step=t, batch_size=16, seq_len=32))
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
    losses = np.asarray(losses)
    assert abs(losses[0] - math.log2(mr_chars.vocab_size)) < 0.3, losses[:3]
    assert losses[-10:].mean() < 3.5, losses[-10:]
