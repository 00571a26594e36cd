"""uhn_jax.plots and ``uhn-jax plot`` on small fake workdirs, and on two tiny real runs."""

import json
import subprocess
import sys

import jax
import matplotlib.image
import numpy as np
import pytest
from conftest import subprocess_env

from uhn_jax import plots
from uhn_jax.analysis import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, *, mode="uhn", model="mlp-64-64", seed=0, metric="accuracy", shift=0.0):
    """A fake finished run: init-stage lines, training lines every 10 steps, two evaluations."""
    run_dir.mkdir(parents=True)
    lines = [{"step": 5, "loss": 99.0, metric: 99.0, "stage": "init"}]
    for step in range(10, 101, 10):
        value = step / 100 + shift
        lines.append(
            {"step": step, metric: value, "grad_norm": 0.5, "loss": 1 / step, "stage": "task"}
        )
        if step % 50 == 0:
            lines.append({"step": step, f"test_{metric}": value - 0.01})
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"  # with a trailing blank line
    (run_dir / "metrics.jsonl").write_text(text)
    results = {
        "mode": mode,
        "model": model,
        "dataset": "digits",
        "seed": seed,
        "metric_name": metric,
        "test_metric": 0.9,
        "num_target_params": 100,
        "num_generator_params": 0 if mode == "direct" else 50,
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "config.json").write_text(json.dumps({"mode": mode, "seed": seed}))
    return results


def write_compare(workdir, modes=("direct", "uhn"), seeds=2):
    rows = [
        {**write_run(workdir / f"{m}_seed{s}", mode=m, seed=s, shift=0.01 * s), "mode": m}
        for m in modes
        for s in range(seeds)
    ]
    (workdir / "compare.json").write_text(json.dumps(rows))


def check_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_curves_with_two_seeds_of_two_labels_writes_a_png(tmp_path):
    groups = {}
    for label in ("direct", "uhn"):
        groups[label] = [tmp_path / f"{label}_seed{s}" for s in range(2)]
        for s, run in enumerate(groups[label]):
            write_run(run, mode=label, seed=s, shift=0.02 * s)
    out = plots.curves(groups, "accuracy", tmp_path / "figs" / "acc.png", title="t", ylabel="acc")
    assert out == tmp_path / "figs" / "acc.png"
    check_png(out)


def test_mean_band_uses_only_the_steps_every_seed_logged():
    runs = [
        (np.array([10, 20, 30]), np.array([1.0, 2.0, 3.0])),
        (np.array([20, 30, 40]), np.array([4.0, 6.0, 8.0])),
        (np.array([0, 20, 30]), np.array([9.0, 0.0, 3.0])),
    ]
    steps, mean, lo, hi = plots._mean_band(runs)
    np.testing.assert_array_equal(steps, [20, 30])
    np.testing.assert_array_equal(mean, [2.0, 4.0])
    np.testing.assert_array_equal(lo, [0.0, 3.0])
    np.testing.assert_array_equal(hi, [4.0, 6.0])
    one = plots._mean_band(runs[:1])
    for got in one[1:]:
        np.testing.assert_array_equal(got, [1.0, 2.0, 3.0])


def test_series_skips_init_stage_and_non_numeric_values(tmp_path):
    write_run(tmp_path / "r")
    steps, values = plots._series(tmp_path / "r", "accuracy")
    np.testing.assert_array_equal(steps, np.arange(10, 101, 10))  # not the init line's step 5
    np.testing.assert_allclose(values, steps / 100)
    steps, _ = plots._series(tmp_path / "r", "stage")
    assert len(steps) == 0


def test_curves_names_a_missing_key(tmp_path):
    write_run(tmp_path / "r")
    with pytest.raises(ValueError, match="test_bpc"):
        plots.curves({"uhn": [tmp_path / "r"]}, "test_bpc", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_read_metrics_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plots.read_metrics(tmp_path)
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n\n{"step": 2, "loss"\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 3"):
        plots.read_metrics(tmp_path)
    path.write_text('{"step": 1, "loss": 2.0}\n\n')
    assert plots.read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]


def test_plot_workdir_of_a_compare_run(tmp_path):
    write_compare(tmp_path, modes=("direct", "uhn", "direct_matched"))
    written = plots.plot_workdir(tmp_path)
    assert [p.name for p in written] == ["train_accuracy.png", "test_accuracy.png", "loss.png"]
    assert all(p.parent == tmp_path / "plots" for p in written)
    for path in written:
        check_png(path)
    assert plots._find_groups(tmp_path) == {
        m: [tmp_path / f"{m}_seed{s}" for s in range(2)]
        for m in ("direct", "uhn", "direct_matched")
    }


def test_plot_workdir_of_train_runs_groups_them_by_model(tmp_path):
    for model in ("hyperlstm", "lstm"):
        for seed in range(2):
            write_run(tmp_path / f"{model}_seed{seed}", mode="direct", model=model, metric="bpc")
    (tmp_path / "lstm_seed0" / "metrics.jsonl").write_text(  # no evaluation lines
        '{"step": 10, "bpc": 3.0, "loss": 2.0, "stage": "task"}\n'
    )
    written = plots.plot_workdir(tmp_path, tmp_path / "out")
    assert [p.name for p in written] == ["train_bpc.png", "test_bpc.png", "loss.png"]
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in written)
    groups = plots._find_groups(tmp_path)
    assert list(groups) == ["hyperlstm", "lstm"] and len(groups["lstm"]) == 2


def test_plot_workdir_of_one_run_without_evaluations(tmp_path):
    run = tmp_path / "run"
    write_run(run, metric="rmse")
    lines = [line for line in plots.read_metrics(run) if "test_rmse" not in line]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [p.name for p in plots.plot_workdir(run)] == ["train_rmse.png", "loss.png"]


def test_plot_workdir_without_runs_names_the_workdir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        plots.plot_workdir(tmp_path / "empty")


def test_kernel_image_writes_a_png(tmp_path):
    kernel = np.random.default_rng(0).normal(size=(7, 7, 2, 3))
    out = plots.kernel_image(kernel, tmp_path / "k" / "kernel.png", title="layer_001")
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(out).ndim == 3


def test_cli_plot_writes_the_figures(tmp_path):
    write_compare(tmp_path / "w")
    out = tmp_path / "elsewhere"  # the default, WORKDIR/plots, is checked on plot_workdir
    cmd = [sys.executable, "-m", "uhn_jax.cli", "plot", "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(
        cmd + ["--out", str(out)], capture_output=True, text=True, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr
    names = ["train_accuracy.png", "test_accuracy.png", "loss.png"]
    assert proc.stdout.split() == [str(out / n) for n in names]
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_kernel_figures_draw_the_trained_conv_kernels_of_a_run(tmp_path):
    from conftest import load_config

    from uhn_jax import config as config_lib
    from uhn_jax.training import experiments, train

    cfg = load_config("test")
    cfg.mode = "direct"
    cfg.model.family = "cnn"
    cfg.model.widths = (4,)
    cfg.model.depths = (1,)
    cfg.train.steps = 2
    train.run(config_lib.from_config_dict(cfg), tmp_path / "run", progress=False)
    _, params = experiments.load_model_params(tmp_path / "run")
    kernels = [p for p in jax.tree.leaves(params) if p.ndim == 4]
    paths = plots.plot_workdir(tmp_path / "run", kernels=True)
    drawn = [p for p in paths if p.name.startswith("kernel_")]
    assert len(drawn) == len(kernels) > 0
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)


def kept_figures(monkeypatch):
    """The figures saved from now on (each still written), to inspect what was drawn."""
    kept, save = [], figures.save

    def keep(fig, out):
        kept.append(fig)
        return save(fig, out)

    monkeypatch.setattr(figures, "save", keep)
    return kept


def test_tensors_are_named_by_path_in_tree_order():
    params = {"layer_001": {"kernel": np.ones((2, 3))}, "layer_000": {"bias": np.arange(3.0)}}
    flat = plots.run_figures.tensors(params)
    assert list(flat) == ["layer_000/bias", "layer_001/kernel"]  # the names of init_fit.json
    np.testing.assert_array_equal(flat["layer_000/bias"], [0.0, 1.0, 2.0])
    assert flat["layer_001/kernel"].shape == (6,)


def test_weight_histograms_draw_each_shared_tensor_for_each_label(tmp_path, monkeypatch):
    kept = kept_figures(monkeypatch)
    rng = np.random.default_rng(0)
    trained = {
        f"layer_00{i}": {"kernel": rng.normal(size=(4, 4)), "bias": rng.normal(size=4)}
        for i in range(2)
    }
    generated = {**trained, "extra": {"kernel": np.ones(3)}}  # not in `trained`: left out
    out = plots.weight_histograms({"direct": trained, "uhn": generated}, tmp_path / "w.png")
    check_png(out)
    axes = [ax for ax in kept[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "layer_000/bias (4)",
        "layer_000/kernel (16)",
        "layer_001/bias (4)",
        "layer_001/kernel (16)",
    ]
    assert all(len(ax.patches) == 2 for ax in axes)  # one step histogram per label
    assert axes[0].get_legend_handles_labels()[1] == ["direct", "uhn"]

    plots.weight_histograms({"a": trained}, tmp_path / "w2.png", max_tensors=1, title="t")
    assert kept[1].get_suptitle() == "t (first 1 of 4 tensors)"
    with pytest.raises(ValueError, match="share no tensor"):
        plots.weight_histograms({"a": trained, "b": {"x": np.ones(2)}}, tmp_path / "w3.png")


def init_rows(*stds):
    return [
        {
            "tensor": f"layer_00{i}/kernel",
            "mean": 0.0,
            "std": s,
            "target_mean": 0.0,
            "target_std": 0.1,
        }
        for i, s in enumerate(stds)
    ]


def test_init_fit_plot_marks_the_tensors_off_target_red(tmp_path, monkeypatch):
    kept = kept_figures(monkeypatch)
    check_png(plots.init_fit_plot(init_rows(0.1, 0.25, 0.12), tmp_path / "fit.png"))
    (ax,) = kept[0].axes
    assert ax.get_title() == "1 of 3 tensors off target by > 50 %"
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()][1] == "layer_001/kernel"
    handles, labels = ax.get_legend_handles_labels()
    points = dict(zip(labels, handles, strict=True))
    np.testing.assert_allclose(points["generated, > 50 % off"].get_offsets(), [[0.25, 1]])
    np.testing.assert_allclose(points["generated std"].get_offsets(), [[0.1, 0], [0.12, 2]])

    plots.init_fit_plot({"a": init_rows(0.1), "b": init_rows(0.3, 0.1)}, tmp_path / "t.png")
    titles = [ax.get_title() for ax in kept[1].axes]
    assert titles == [
        "task a: 0 of 1 tensors off target by > 50 %",
        "task b: 1 of 2 tensors off target by > 50 %",
    ]
    with pytest.raises(ValueError, match="empty"):
        plots.init_fit_plot([], tmp_path / "e.png")


def result_row(mode, gen, metric_value, metric="accuracy", model="mlp"):
    return {
        "mode": mode,
        "dataset": "digits",
        "model": model,
        "metric_name": metric,
        "test_metric": metric_value,
        "num_target_params": 100,
        "num_generator_params": gen,
    }


def test_ratio_scatter_plots_the_hypernetwork_runs_of_the_common_metric(tmp_path, monkeypatch):
    kept = kept_figures(monkeypatch)
    rows = [
        result_row("direct", 0, 0.99),  # no generator: left out
        result_row("uhn", 50, 0.90),
        result_row("uhn", 200, 0.95),
        result_row("conditional", 400, 0.97),
        result_row("uhn", 50, 0.3, metric="rmse"),  # the less common metric: left out
    ]
    check_png(plots.ratio_scatter(rows, tmp_path / "r.png"))
    (ax,) = kept[0].axes
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["digits, uhn", "digits, conditional"]
    np.testing.assert_allclose(handles[0].get_offsets(), [[0.5, 0.90], [2.0, 0.95]])
    np.testing.assert_allclose(handles[1].get_offsets(), [[4.0, 0.97]])
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy"
    with pytest.raises(ValueError, match="generator"):
        plots.ratio_scatter(rows[:1], tmp_path / "none.png")


def test_plot_workdir_draws_init_fit_members_and_ratio_of_train_runs(tmp_path):
    for model, gen in (("m1", 10), ("m2", 100), ("m3", 1000)):
        results = write_run(tmp_path / model, model=model)
        results["num_generator_params"] = gen
        if model != "m3":
            (tmp_path / model / "init_fit.json").write_text(json.dumps(init_rows(0.1, 0.3)))
        if model == "m2":
            results["members"] = [
                {"index": i, "split": split, "num_params": 10 * (i + 1), "test_metric": 0.9}
                for i, split in enumerate(["hold_in", "hold_in", "held_out"])
            ]
        (tmp_path / model / "results.json").write_text(json.dumps(results))
    written = plots.plot_workdir(tmp_path)
    assert [p.name for p in written] == [
        "train_accuracy.png",
        "test_accuracy.png",
        "loss.png",
        "init_fit_m1.png",
        "init_fit_m2.png",
        "members.png",
        "ratio.png",
    ]
    for path in written:
        check_png(path)


def test_plot_workdir_of_compare_workdirs_plots_each_and_the_ratio_across(tmp_path):
    for name, gen in (("small", 50), ("large", 500)):
        write_compare(tmp_path / name, seeds=1)
        results = json.loads((tmp_path / name / "uhn_seed0" / "results.json").read_text())
        results["num_generator_params"] = gen
        (tmp_path / name / "uhn_seed0" / "results.json").write_text(json.dumps(results))
    written = plots.plot_workdir(tmp_path, tmp_path / "out")
    curves_of = ["train_accuracy.png", "test_accuracy.png", "loss.png"]
    assert [str(p.relative_to(tmp_path / "out")) for p in written] == [
        *(f"large/{n}" for n in curves_of),
        *(f"small/{n}" for n in curves_of),
        "ratio.png",
    ]
    check_png(written[-1])


def test_plot_of_a_finished_compare_draws_generated_against_trained_weights(tmp_path, monkeypatch):
    from conftest import load_config

    from uhn_jax import config as config_lib
    from uhn_jax.training import experiments

    cfg = load_config("test")
    cfg.train.steps = 2
    table = experiments.compare(config_lib.from_config_dict(cfg), tmp_path, seeds=1, progress=False)
    # results.json reports generator / target parameters (null for direct), as the table does.
    uhn, direct = (
        json.loads((tmp_path / f"{m}_seed0" / "results.json").read_text())
        for m in ("uhn", "direct")
    )
    assert uhn["num_generator_params"] > 0 and direct["generator_target_ratio"] is None
    assert uhn["generator_target_ratio"] == uhn["num_generator_params"] / uhn["num_target_params"]
    ratio = f"{uhn['generator_target_ratio']:.3g}×"
    assert f"| {uhn['num_generator_params']:,} | {ratio} |" in table and "| 0 | – |" in table
    drawn = {}
    draw = plots.weight_histograms

    def spy(weights, out, **kwargs):
        drawn.update(weights)
        return draw(weights, out, **kwargs)

    monkeypatch.setattr(plots, "weight_histograms", spy)
    written = plots.plot_workdir(tmp_path)
    assert [p.name for p in written] == [
        "train_accuracy.png",
        "test_accuracy.png",
        "loss.png",
        "init_fit.png",
        "weights.png",
    ]
    check_png(written[-1])
    assert list(drawn) == ["direct (trained)", "uhn (generated)"]
    for label, mode in zip(drawn, ("direct", "uhn"), strict=True):
        _, params = experiments.load_model_params(tmp_path / f"{mode}_seed0")
        jax.tree.map(np.testing.assert_array_equal, drawn[label], params)
    assert plots.plot_workdir(tmp_path, weights=False)[-1].name == "init_fit.png"


def test_ratio_scatter_draws_the_baseline_and_labels_points_by_a_chosen_key(tmp_path, monkeypatch):
    kept = kept_figures(monkeypatch)
    rows = [{**result_row("uhn", g, v), "size": f"h={g}"} for g, v in ((50, 0.9), (200, 0.95))]
    plots.ratio_scatter(rows, tmp_path / "r.png", baseline=0.97, label_key="size")
    (ax,) = kept[0].axes
    _, labels = ax.get_legend_handles_labels()
    assert labels == ["digits, uhn", "direct"]
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [0.97, 0.97])
    assert [t.get_text() for t in ax.texts] == ["h=50", "h=200"]


def _continual_row(mode, seed, matrix, benchmark="split"):
    final = matrix[-1]
    return {
        "task": "continual", "mode": mode, "benchmark": benchmark, "dataset": "digits",
        "seed": seed, "accuracy_matrix": matrix, "num_trained_params": 100,
        "mean_final_accuracy": float(np.mean(final)),
        "bwt": float(np.mean([final[j] - matrix[j][j] for j in range(len(final) - 1)])),
    }  # fmt: skip


def test_continual_figures_average_seeds_and_order_methods(tmp_path):
    from uhn_jax.analysis import continual_figures as cf

    rows = [
        _continual_row("finetune", 0, [[1.0, None], [0.5, 1.0]]),
        _continual_row("hnet", 0, [[1.0, None], [0.9, 0.8]]),
        _continual_row("hnet", 1, [[0.8, None], [0.7, 0.6]]),
        {"mode": "uhn", "test_metric": 0.9},  # not a continual run: left out
    ]
    groups = cf.group_runs(rows)
    assert list(groups) == [("split", "digits")]
    assert list(groups["split", "digits"]) == ["hnet", "finetune"]  # METHOD_ORDER
    mean = cf.mean_matrix(groups["split", "digits"]["hnet"])
    np.testing.assert_allclose(mean[1], [80.0, 70.0])
    assert np.isnan(mean[0, 1])  # task 1 not yet seen after task 0
    table = cf.summary_table(groups["split", "digits"])
    assert "| hnet | 2 | 75.00 ± 14.14 % | -10.00 ± 0.00 pp | 100 |" in table
    assert "| finetune | 1 | 75.00 % | -50.00 pp | 100 |" in table
    with pytest.raises(ValueError, match="different shapes"):
        cf.mean_matrix([rows[0], _continual_row("finetune", 1, [[1.0]])])
    (path,) = cf.write_figures(rows, tmp_path)
    assert path.name == "accuracy_matrix_split_digits.png"
    check_png(path)
    assert cf.write_figures(rows[3:], tmp_path) == []
