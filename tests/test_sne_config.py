"""The ``uhn-jax sne`` presets (issue 26, part 2; configs/sne.py), checked through the CLI
without running anything: their tasks, methods and settings, and a bad override refused."""

import dataclasses

import pytest
from conftest import CONFIG_DIR

from uhn_jax.training import sne_config


def test_the_cli_validates_an_sne_command():
    from uhn_jax import cli

    config = str(CONFIG_DIR / "sne.py")
    command = cli.check_command(["sne", "--config", f"{config}:cpu", "--workdir", "runs/s"])
    spec = command.validated
    assert isinstance(spec, sne_config.Spec) and len(spec.tasks) == 5
    kinds = {t.kind for t in spec.tasks}  # the table: one task of each kind at least
    assert kinds == {"same_zoo", "cross_dataset", "cross_architecture"}
    assert spec.train.rank_weight == 1.0 and spec.train.select == "tau"
    # The large same-zoo population: its one task, the cpu preset's settings otherwise.
    command = cli.check_command(["sne", "--config", f"{config}:fashion_mlp", "--workdir", "s"])
    fashion = command.validated
    assert [(t.kind, t.datasets, t.families) for t in fashion.tasks] == [
        ("same_zoo", ("fashion_mnist",), ("mlp",))
    ]
    assert fashion.methods == ("sne", "stats_mlp", "stats_gbt")
    assert fashion.train.steps == 2400
    for field in ("chunk_size", "sne"):
        assert getattr(fashion, field) == getattr(spec, field), field
    # The fixed-seed zoo: one same-zoo task over all its digits MLPs, the digits settings.
    command = cli.check_command(["sne", "--config", f"{config}:digits_fixed", "--workdir", "s"])
    fixed = command.validated
    assert fixed.zoo == "runs/zoo_digits_fixed" and fixed.seeds == (0, 1, 2)
    assert [(t.kind, t.datasets, t.families) for t in fixed.tasks] == [
        ("same_zoo", ("digits",), ())
    ]
    assert fixed.methods == ("sne", "stats_mlp", "stats_gbt") and fixed.train.steps == 1500
    # Every ordered pair of the digits zoo's three families, the cpu preset's settings.
    command = cli.check_command(
        ["sne", "--config", f"{config}:cross_architecture", "--workdir", "s"]
    )
    cross = command.validated
    assert cross.zoo == "runs/zoo_digits" and cross.seeds == (0, 1, 2)
    assert sorted((t.kind, t.train, t.test, t.datasets) for t in cross.tasks) == [
        ("cross_architecture", a, b, ("digits",))
        for a, b in sorted(
            [("cnn", "ha_cnn"), ("cnn", "mlp"), ("ha_cnn", "cnn")]
            + [("ha_cnn", "mlp"), ("mlp", "cnn"), ("mlp", "ha_cnn")]
        )
    ]
    assert cross.methods == ("sne", "stats_mlp", "stats_gbt") and cross.train.steps == 800
    assert cross.chunk_size == spec.chunk_size and cross.train == spec.train
    assert cross.sne == dataclasses.replace(
        spec.sne,
        raw_summary=True,
        fan_in_scale=True,
        last_layer=True,
        layer_positions=False,
        network_size=True,
    )
    with pytest.raises(cli.CommandError, match="chunking.chunk_size"):
        cli.check_command(
            ["sne", "--config", config, "--workdir", "w", "--config.chunking.chunk_size=-1"]
        )
