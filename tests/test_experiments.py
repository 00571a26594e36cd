"""The generator/target parameter ratio (issue 25): in results.json and the summary tables."""

import json

from uhn_jax.training import experiments, results


def run_row(mode, gen, value, *, model="mlp-64x64", seed=0, target=8970, ratio_field=True):
    """A finished run's ``results.json`` dict; ``ratio_field=False`` is one written before
    ``generator_target_ratio`` existed."""
    row = {
        "mode": mode,
        "dataset": "digits",
        "model": model,
        "seed": seed,
        "metric_name": "accuracy",
        "test_metric": value,
        "num_target_params": target,
        "num_generator_params": gen,
        "init_steps": 0,
        "steps": 5,
        "wall_s": 1.0,
    }
    return results.with_ratio(row) if ratio_field else row


def test_generator_target_ratio_is_none_without_a_generator():
    assert results.generator_target_ratio(run_row("uhn", 11_301, 0.9)) == 11_301 / 8970
    assert results.generator_target_ratio(run_row("direct", 0, 0.9)) is None
    assert results.generator_target_ratio({"num_generator_params": 5}) is None  # multitask
    assert results.format_ratio(11_301 / 8970) == "1.26×"
    assert results.format_ratio(625 / 8970) == "0.0697×"
    assert results.format_ratio(591_617 / 254) == "2,329×"  # a KAN's, not 2.33e+03
    assert results.format_ratio(None) == "–"


def test_write_adds_the_ratio_after_the_generator_count(tmp_path):
    row = run_row("uhn", 2273, 0.9, ratio_field=False)
    written = results.write(tmp_path, row)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == written
    keys = list(on_disk)
    assert keys[keys.index("num_generator_params") + 1] == "generator_target_ratio"
    assert on_disk["generator_target_ratio"] == 2273 / 8970
    assert results.write(tmp_path, run_row("direct", 0, 0.9))["generator_target_ratio"] is None
    # A result without both counts (a multi-task run's top level) gets no field.
    assert "generator_target_ratio" not in results.write(tmp_path, {"num_generator_params": 5})


def test_comparison_table_shows_the_ratio_and_a_dash_for_direct():
    rows = [run_row("direct", 0, 0.9), run_row("uhn", 11_301, 0.86)]
    lines = experiments.comparison_table(rows).splitlines()
    assert "| generator params | gen/target | seeds |" in lines[0]
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| 8,970 | 0 | – | 1 |" in lines[2]
    assert "| 8,970 | 11,301 | 1.26× | 1 |" in lines[3]


def test_summarize_of_compare_runs_shows_the_uhn_ratio(tmp_path):
    # "old": written before the ratio field; "bare": without the generator's count either.
    for name, gen, ratio_field in (("new", 11_301, True), ("old", 2273, False), ("bare", 1, False)):
        rows = [run_row("direct", 0, 0.9), run_row("uhn", gen, 0.88, ratio_field=ratio_field)]
        if name == "bare":
            rows = [{k: v for k, v in r.items() if k != "num_generator_params"} for r in rows]
        (tmp_path / name).mkdir()
        (tmp_path / name / "compare.json").write_text(json.dumps(rows))
    lines = experiments.summarize(tmp_path).splitlines()
    assert lines[0].endswith("| UHN - direct (pp) | gen/target |")
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| bare | mlp-64x64 | 8,970 | 1 | 90.00 ± 0.00 | 88.00 ± 0.00 | -2.00 | – |" in lines
    assert "| new | mlp-64x64 | 8,970 | 1 | 90.00 ± 0.00 | 88.00 ± 0.00 | -2.00 | 1.26× |" in lines
    assert "| old | mlp-64x64 | 8,970 | 1 | 90.00 ± 0.00 | 88.00 ± 0.00 | -2.00 | 0.253× |" in lines


def test_summarize_of_train_runs_shows_the_ratio_and_a_dash_for_direct(tmp_path):
    runs = {
        "direct_seed0": run_row("direct", 0, 0.97),
        "uhn_seed0": run_row("uhn", 11_301, 0.95),
        "uhn_seed1": run_row("uhn", 11_301, 0.96, seed=1, ratio_field=False),
        "small_seed0": run_row("uhn", 625, 0.9, model="mlp-8x8", target=170),
        "big_seed0": run_row("uhn", 50_049, 0.97),  # a bigger generator: its own group
    }
    for name, row in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(row))
    lines = experiments.summarize(tmp_path).splitlines()
    assert lines[0].endswith("| per seed | gen/target |")
    assert "| mlp-64x64 | digits | 8,970 | 1 | 97.00 ± 0.00 % | 97.00 | – |" in lines
    assert (
        "| uhn mlp-64x64 (1.26×) | digits | 11,301 | 2 | 95.50 ± 0.50 % | 95.00 / 96.00 | 1.26× |"
        in lines
    )
    assert (
        "| uhn mlp-64x64 (5.58×) | digits | 50,049 | 1 | 97.00 ± 0.00 % | 97.00 | 5.58× |" in lines
    )
    assert "| uhn mlp-8x8 | digits | 625 | 1 | 90.00 ± 0.00 % | 90.00 | 3.68× |" in lines
