"""SNE's encoder options (issue 26, part 2): the layer summary and the chunks read at their
layer's scale, the raw statistics, kernels read at their init's scale, layer positions, and
standardised inputs with the network's size (``sne.Settings``; docs/sne.md)."""

import dataclasses

import jax
import numpy as np
import pytest
from test_sne import SETTINGS, _ha_cnn_and_permuted, _mlp_and_permuted

from uhn_jax.weightspace import chunking, sne


def test_layer_summary_is_each_layers_scale_and_shape_and_follows_the_batch_scale():
    kernel = np.asarray([[1.0, -1.0], [3.0, -3.0]], np.float32)  # RMS sqrt(5)
    params = {"layer_000": {"kernel": kernel, "bias": np.asarray([2.0, 2.0], np.float32)}}
    params["layer_001"] = {"kernel": np.ones((2, 3), np.float32)}  # no bias
    t = chunking.tokenize(params, 4)
    f = dict(zip(chunking.SUMMARY_FEATURES, t.summary[0], strict=True))
    r = np.sqrt(5.0)
    expect = {"kernel_log_rms": np.log(r), "kernel_mean": 0.0, "kernel_std": 1.0}
    expect |= {"kernel_q0": -3 / r, "kernel_q50": 0.0, "kernel_q100": 3 / r}
    expect |= {"bias_log_rms": np.log(2.0), "bias_mean": 1.0, "bias_std": 0.0, "bias_q25": 1.0}
    for name, value in expect.items():
        np.testing.assert_allclose(f[name], value, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(t.summary[1, len(chunking.PART_SUMMARY) :], 0)  # no bias
    # The batch's summary is that of the scaled values: its log RMS shifts, the ratios stay;
    # a missing part stays zeros.
    scaled = jax.tree.map(lambda x: 4 * x, params)
    a = chunking.collate([t], max_layers=3, max_classes=10, scale=4.0)
    b = chunking.collate([chunking.tokenize(scaled, 4)], max_layers=3, max_classes=10)
    np.testing.assert_allclose(a["summary"], b["summary"], atol=1e-6)
    np.testing.assert_allclose(a["values"], b["values"])
    assert a["summary"][0, 1, 0] == np.float32(np.log(4.0))  # the ones kernel: RMS 1 -> 4


def test_raw_statistics_are_the_summarys_values_at_the_weights_own_scale():
    kernel = np.asarray([[1.0, -1.0], [3.0, -3.0]], np.float32)
    params = {"layer_000": {"kernel": kernel, "bias": np.asarray([2.0, 2.0], np.float32)}}
    second = np.asarray([[0.5, 1.5, -2.0], [0.25, -1.0, 4.0]], np.float32)
    params["layer_001"] = {"kernel": second}  # no bias
    t = chunking.tokenize(params, 4)
    raw = np.asarray(sne.raw_statistics(t.summary))
    assert raw.shape == (2, 2 * (len(chunking.PART_SUMMARY) - 1))
    for layer, values in enumerate((kernel, second)):
        v = values.reshape(-1).astype(np.float64)
        expect = [v.mean(), v.std(), *np.quantile(v, [0, 0.25, 0.5, 0.75, 1])]
        np.testing.assert_allclose(raw[layer, :7], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw[0, 7:], [2, 0, 2, 2, 2, 2, 2], atol=1e-6)  # the bias
    np.testing.assert_array_equal(raw[1, 7:], 0)  # no bias: zeros
    # SNE with them: the summary layer reads 16 + 14 features; a permuted network still
    # gives the same prediction.
    net = sne.SNE(dataclasses.replace(SETTINGS, raw_summary=True))
    _, p, q = _mlp_and_permuted()
    batch = chunking.collate(
        [chunking.tokenize(p, 8), chunking.tokenize(q, 8)], max_layers=8, max_classes=10
    )
    v = net.init(jax.random.key(0), batch)
    assert v["params"]["layer_summary"]["kernel"].shape[0] == 30
    pred = net.apply(v, batch)
    assert pred[0] == pred[1]


def test_without_layer_positions_a_layer_is_placed_by_its_roles_alone():
    _, p, _ = _mlp_and_permuted()
    batch = chunking.collate([chunking.tokenize(p, 8)], max_layers=8, max_classes=10)
    moved = {**batch, "depth": batch["depth"] + 1}  # other indices, same roles
    for positions in (True, False):
        net = sne.SNE(dataclasses.replace(SETTINGS, layer_positions=positions))
        v = net.init(jax.random.key(0), batch)
        assert ("layer_position" in v["params"]) is positions
        same = np.array_equal(net.apply(v, batch), net.apply(v, moved))
        assert same is not positions


def test_with_the_summary_chunks_are_read_relative_to_their_layers_scale():
    _, p, _ = _mlp_and_permuted()
    scaled = {**p, "layer_001": jax.tree.map(lambda x: 3 * x, p["layer_001"])}

    def batch(params):
        return chunking.collate([chunking.tokenize(params, 8)], max_layers=8, max_classes=10)

    net = sne.SNE(SETTINGS)
    v = net.init(jax.random.key(0), batch(p))
    assert not np.allclose(net.apply(v, batch(p)), net.apply(v, batch(scaled)))

    # Without the summary, which carries the layer's scale, its chunks look the same.
    def zero(tree, *names):
        return jax.tree_util.tree_map_with_path(
            lambda path, x: 0 * x if any(n in str(path) for n in names) else x, tree
        )

    blind = zero(v, "layer_summary")
    np.testing.assert_allclose(net.apply(blind, batch(p)), net.apply(blind, batch(scaled)), 1e-5)
    off = sne.SNE(dataclasses.replace(SETTINGS, layer_summary=False))
    w = off.init(jax.random.key(0), batch(p))
    assert "layer_summary" not in w["params"]
    w = zero(w, "chunk_scale")
    assert not np.allclose(off.apply(w, batch(p)), off.apply(w, batch(scaled)))


def test_network_size_is_read_against_the_training_networks_and_needs_their_norm():
    nets = [_mlp_and_permuted()[1], _ha_cnn_and_permuted()[1]]
    toks = [chunking.tokenize(x, 8) for x in nets]
    batch = chunking.collate(toks, max_layers=8, max_classes=10)
    expect = [[np.log10(sum(x.size for x in jax.tree.leaves(p))), 4] for p in nets]
    np.testing.assert_allclose(batch["size"], expect, rtol=1e-6)
    norm = sne.size_norm(batch["size"])  # both have 4 layers: a constant is only centred
    np.testing.assert_allclose(norm, [np.mean(expect, 0), [np.std(expect, 0)[0], 1]], 1e-6)
    s = dataclasses.replace(SETTINGS, network_size=True)
    net, key = sne.SNE(s), jax.random.key(0)
    with pytest.raises(ValueError, match=r"sizes from the batch: .*sne\.with_size_norm"):
        net.init(key, batch)
    b = sne.with_size_norm(batch, norm)
    v = net.init(key, b)
    assert "network_size" in v["params"]
    pred = net.apply(v, b)
    # A larger network reads differently, unless the training networks were larger too.
    larger = {**b, "size": b["size"] + np.float32([1.0, 0.0])}
    assert not np.allclose(net.apply(v, larger), pred)
    shifted = norm + np.float32([[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(net.apply(v, sne.with_size_norm(larger, shifted)), pred, 1e-6)
    # A permuted network has the same size: the same prediction.
    _, p, q = _mlp_and_permuted()
    pair = chunking.collate([chunking.tokenize(x, 8) for x in (p, q)], max_layers=8, max_classes=10)
    out = net.apply(v, sne.with_size_norm(pair, norm))
    assert out[0] == out[1]
    # The default encoder reads no size.
    plain = sne.SNE(SETTINGS)
    w = plain.init(key, batch)
    assert "network_size" not in w["params"]
    larger = {**batch, "size": batch["size"] + 1}
    np.testing.assert_array_equal(plain.apply(w, larger), plain.apply(w, batch))


def test_fan_in_scale_reads_each_kernels_scale_in_units_of_its_init():
    _, p, q = _ha_cnn_and_permuted()  # convs, a dense head over a flattened map, a dense
    batch = chunking.collate([chunking.tokenize(p, 8)], max_layers=8, max_classes=10)
    read = np.asarray(sne.fan_in_summary(batch["summary"], batch["roles"]))[0]
    kernels = [p[name]["kernel"] for name in sorted(p)]
    for i, k in enumerate(kernels):  # fan-in from the params tree, not from the roles
        rms, fan_in = np.sqrt(np.mean(np.square(k, dtype=np.float64))), np.prod(k.shape[:-1])
        np.testing.assert_allclose(read[i, 0], np.log(rms * np.sqrt(fan_in)), atol=1e-5)
    np.testing.assert_array_equal(read[:, 1:], batch["summary"][0, :, 1:])  # ratios, bias
    np.testing.assert_array_equal(read[len(kernels) :], 0)  # padding layers
    # Unit-variance inits of fan-in 16 and 1,024 differ by 1.7 in log RMS, not in this scale.
    rng = np.random.default_rng(0)
    wide = {
        "layer_000": {"kernel": rng.normal(0, 1 / 4, (16, 64)).astype(np.float32)},
        "layer_001": {"kernel": rng.normal(0, 1 / 32, (1024, 10)).astype(np.float32)},
    }
    b = chunking.collate([chunking.tokenize(wide, 8)], max_layers=8, max_classes=10)
    assert abs(b["summary"][0, 0, 0] - b["summary"][0, 1, 0]) > 1.5
    np.testing.assert_allclose(sne.fan_in_summary(b["summary"], b["roles"])[0, :2, 0], 0, atol=0.05)
    # SNE with it: a permuted network gives the same prediction, and the same params read
    # the network differently without it.
    s = dataclasses.replace(SETTINGS, raw_summary=True, fan_in_scale=True)
    pair = chunking.collate([chunking.tokenize(x, 8) for x in (p, q)], max_layers=8, max_classes=10)
    v = sne.SNE(s).init(jax.random.key(0), pair)
    out = sne.SNE(s).apply(v, pair)
    assert out[0] == out[1]
    plain = sne.SNE(dataclasses.replace(s, fan_in_scale=False)).apply(v, pair)
    assert not np.allclose(plain, out)
    with pytest.raises(ValueError, match=r"sne\.fan_in_scale .*sne\.layer_summary=True"):
        dataclasses.replace(s, layer_summary=False, raw_summary=False).check()


def test_last_layer_adds_only_the_last_real_layers_summary_to_the_network_vector():
    nets = [_mlp_and_permuted()[1], _ha_cnn_and_permuted()[1]]
    toks = [chunking.tokenize(x, 8) for x in nets]
    batch = chunking.collate(toks, max_layers=8, max_classes=10)
    s = dataclasses.replace(SETTINGS, raw_summary=True, fan_in_scale=True, last_layer=True)
    net = sne.SNE(s)
    v = net.init(jax.random.key(0), batch)
    assert v["params"]["last_layer"]["kernel"].shape[0] == 30
    # With the layers' own summary weights zeroed, a summary reaches the prediction only
    # through the last layer's: changing it moves the prediction, changing another's does not.
    blind = jax.tree_util.tree_map_with_path(
        lambda path, x: 0 * x if "layer_summary" in str(path) else x, v
    )
    pred = net.apply(blind, batch)
    for b, depth in enumerate(x.num_layers for x in toks):
        for layer in range(depth):
            summary = batch["summary"].copy()
            summary[b, layer, 1] += 1.0  # the kernel's mean over its RMS
            moved = net.apply(blind, {**batch, "summary": summary})
            assert np.array_equal(moved[1 - b], pred[1 - b])
            assert bool(moved[b] != pred[b]) is (layer == depth - 1), (b, layer)
    # Each network reads alike alone and in a batch padded to another's layers and tokens.
    for b, t in enumerate(toks):
        alone = chunking.collate([t], max_layers=8, max_classes=10)
        np.testing.assert_allclose(net.apply(v, alone)[0], net.apply(v, batch)[b], rtol=1e-5)
    bad = dataclasses.replace(s, layer_summary=False, raw_summary=False, fan_in_scale=False)
    with pytest.raises(ValueError, match=r"sne\.last_layer .*sne\.layer_summary=True"):
        bad.check()
    with pytest.raises(ValueError, match=r"sne\.last_layer .*sne\.layer_summary=True"):
        sne.SNE(bad).init(jax.random.key(0), batch)  # the module checks its settings too
