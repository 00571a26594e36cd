"""The config presets (configs/): variants derive from their base config and unknown variant
names are refused."""

import importlib

import pytest
from conftest import load_config


def test_resnet_variants_derive_from_resnet20():
    variants = importlib.import_module("configs.cifar10_resnet")
    base = load_config("cifar10_resnet20")
    for depth, n in ((8, 2), (20, 6), (32, 10), (44, 14), (56, 18)):
        variant = variants.get_config(str(depth))
        assert tuple(variant.model.depths) == (n, n, n)
        assert variant.train.lr == base.train.lr and variant.generator.n_freqs == 2048
    local = variants.get_config("56,runlocal")
    assert tuple(local.model.depths) == (18, 18, 18)
    assert local.generator.n_freqs == 256 and local.train.steps == 2000
    with pytest.raises(ValueError, match="depth"):
        variants.get_config("21")


def test_cnn_runlocal_variants_derive_and_reject_unknown_names():
    from configs import fashion_mnist_cnn, mnist_cnn

    full, local = mnist_cnn.get_config(), mnist_cnn.get_config("runlocal")
    assert (local.train.steps, local.train.init_steps, local.train.lr) == (300, 100, 5e-4)
    assert local.model == full.model and local.generator == full.generator
    fashion = fashion_mnist_cnn.get_config("runlocal")
    assert fashion.data.name == "fashion_mnist" and fashion.train.steps == 468
    assert fashion.train.lr == local.train.lr and fashion.model == local.model
    assert fashion_mnist_cnn.get_config().train.steps == 2340
    for module in (mnist_cnn, fashion_mnist_cnn):
        with pytest.raises(ValueError, match="runlocal"):
            module.get_config("fast")


def test_planetoid_cpu_variant_changes_the_generator_rates_and_citeseer_gcn_init():
    from configs import planetoid

    full, cpu = planetoid.get_config("citeseer,gat"), planetoid.get_config("citeseer,gat,cpu")
    assert (full.generator.hidden, full.generator.n_freqs, full.generator.sigma) == (128, 2048, 100)
    assert (full.train.lr, full.train.init_steps, full.train.steps) == (5e-5, 200, 400)
    assert (cpu.generator.hidden, cpu.generator.n_freqs, cpu.generator.sigma) == (64, 256, 3000)
    assert cpu.train.lr == 1e-3 and cpu.model == full.model and cpu.data == full.data
    assert (cpu.train.init_steps, cpu.train.steps) == (full.train.init_steps, full.train.steps)
    # Only CiteSeer GCN gets a longer initialisation stage.
    gcn = planetoid.get_config("citeseer,gcn,cpu")
    assert (gcn.train.init_lr, gcn.train.init_steps, gcn.train.steps) == (3e-3, 200, 200)
    assert planetoid.get_config("citeseer,gcn").train.init_steps == 50
    for bad in ("cora,mlp", "cora,gcn,gpu"):
        with pytest.raises(ValueError, match="planetoid config"):
            planetoid.get_config(bad)
