"""Tests for uhn_jax.multitask: one generator trained on heterogeneous tasks."""

import json

import pytest
from conftest import load_config

from uhn_jax.training import multitask
from uhn_jax.training import tasks as tasks_lib

_KARATE = """
from uhn_jax import config as config_lib


def get_config():
    c = config_lib.default_config_dict()
    c.data.name = "karate_club"
    c.model.family = "gcn"
    c.model.widths = (16,)
    return c
"""


def _cfg(tmp_path):
    path = tmp_path / "karate.py"
    path.write_text(_KARATE)
    cfg = load_config("multitask")
    cfg.tasks = ("test", str(path))
    cfg.probs = (3.0, 1.0)
    cfg.generator.hidden = 16
    cfg.generator.n_freqs = 32
    cfg.train.steps = 6
    cfg.train.warmup_steps = 0
    cfg.train.init_steps = 2
    cfg.train.log_every = 2
    cfg.train.checkpoint_every = 4
    return cfg


@pytest.mark.slow
def test_run_resume_and_baselines(tmp_path):
    """One multi-task run (most of its minute is compilation) checked three ways, in one test
    so that pytest-xdist does not build it on both workers."""
    cfg = _cfg(tmp_path)
    results = multitask.run(cfg, tmp_path / "full", progress=False)
    _check_tasks_share_one_generator_and_each_is_evaluated(cfg, tmp_path, results)
    _check_resume_replays_the_task_sequence(cfg, tmp_path, results)
    _check_baselines_train_each_task_alone_with_its_share_of_steps(cfg, tmp_path, results)


def _check_tasks_share_one_generator_and_each_is_evaluated(cfg, tmp, results):
    tasks = multitask.tasks_from_config(cfg)
    assert [t.prob for t in tasks] == [0.75, 0.25]
    # Shared generator and schedule; each task keeps its own batch size.
    assert len({t.exp.generator for t in tasks}) == 1
    assert len({t.exp.train.steps for t in tasks}) == 1
    assert [t.exp.train.batch_size for t in tasks] == [32, 256]
    assert [t["task"] for t in results["tasks"]] == list(cfg.tasks)
    assert all(t["metric_name"] == "accuracy" for t in results["tasks"])
    assert sum(t["steps_sampled"] for t in results["tasks"]) == 8
    assert all(0.0 <= t["test_metric"] <= 1.0 for t in results["tasks"])
    log = [json.loads(line) for line in (tmp / "full" / "metrics.jsonl").open()]
    assert {r["task"] for r in log} <= set(cfg.tasks)
    # The initialisation stage's fit, per task: every tensor of each task's own base model.
    fits = json.loads((tmp / "full" / "init_fit.json").read_text())
    assert list(fits) == list(cfg.tasks)
    assert all(rows and {"tensor", "std", "target_std"} <= set(rows[0]) for rows in fits.values())
    assert len(fits[cfg.tasks[0]]) != len(fits[cfg.tasks[1]])
    assert multitask.run(cfg, tmp / "full", progress=False) == results
    # A workdir written before a train field existed still matches its config.
    saved = json.loads((tmp / "full" / "config.json").read_text())
    del saved["train"]["normalize_grads"]
    expected = json.loads(json.dumps(cfg.to_dict()))
    expected["train"]["normalize_grads"] = False  # what such a run trained with
    assert multitask._with_new_defaults(saved) == expected


def _check_resume_replays_the_task_sequence(cfg, tmp, full):
    multitask.run(cfg, tmp / "split", progress=False, stop_after=5)
    resumed = multitask.run(cfg, tmp / "split", progress=False)
    assert [t["test_metric"] for t in resumed["tasks"]] == [t["test_metric"] for t in full["tasks"]]
    seq = [multitask.task_schedule([0.5, 0.5], 3, s) for s in range(200)]
    assert seq == [multitask.task_schedule([0.5, 0.5], 3, s) for s in range(200)]
    assert 60 < sum(seq) < 140


def test_bad_multitask_configs(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.probs = (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="2 tasks and 3 probs"):
        multitask.tasks_from_config(cfg)
    cfg = _cfg(tmp_path)
    cfg.tasks = ("test", "no_such_config")
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        multitask.tasks_from_config(cfg)
    cfg = _cfg(tmp_path).to_dict()
    with pytest.raises(ValueError, match="range_tasks must be a tuple"):
        multitask.declared_ranges({**cfg, "range_tasks": "mnist_mlp"}, [], [])
    cfg = _cfg(tmp_path)
    cfg.generator.structure = False
    with pytest.raises(ValueError, match="structure"):
        multitask.run(cfg, tmp_path / "r", progress=False)


def test_range_tasks_widen_the_declared_ranges_without_being_trained(tmp_path):
    cfg = _cfg(tmp_path).to_dict()
    tasks = multitask.tasks_from_config(cfg)
    data = [tasks_lib.load_dataset(t.exp) for t in tasks]
    union = multitask.declared_ranges(cfg, tasks, data)
    alone = {**cfg, "tasks": cfg["tasks"][:1], "probs": [1.0]}
    own = multitask.declared_ranges(alone, tasks[:1], data[:1])
    widened = multitask.declared_ranges(
        {**alone, "range_tasks": cfg["tasks"][1:]}, tasks[:1], data[:1]
    )
    assert own != union and widened == union
    # The baseline of a run with range_tasks keeps them, so it sees the same ranges.
    assert multitask.baseline_config({**cfg, "range_tasks": ["x"]}, 0)["range_tasks"] == ["x"]


def test_the_default_config_resolves_to_its_tasks():
    cfg = load_config("multitask")
    tasks = multitask.tasks_from_config(cfg)
    assert [t.exp.model.family for t in tasks] == ["mlp", "cnn", "gcn", "transformer", "kan"]
    assert [t.exp.data.name for t in tasks] == ["mnist", "cifar10", "cora", "mr", "formula"]
    assert tasks[1].exp.model.depths == (2, 2, 2) and tasks[1].exp.train.batch_size == 32
    assert sum(t.prob for t in tasks) == pytest.approx(1.0)


def _check_baselines_train_each_task_alone_with_its_share_of_steps(cfg, tmp, multi):
    first, second = multitask.baseline_config(cfg, 0), multitask.baseline_config(cfg, 1)
    assert first["tasks"] == ["test"] and first["probs"] == [1.0]
    # probs 3:1 of 6 task + 2 init steps -> 4 (+2 init) and 2 (+0 init) steps.
    assert (first["train"]["steps"], first["train"]["init_steps"]) == (4, 2)
    assert (second["train"]["steps"], second["train"]["init_steps"]) == (2, 0)
    assert first["generator"] == cfg.generator.to_dict()
    assert cfg.tasks == ("test", str(tmp / "karate.py"))  # the input config is untouched
    single = multitask.run_baselines(cfg, tmp / "full", progress=False)
    assert [s["task"] for s in single] == list(cfg.tasks)
    assert [s["steps_sampled"] for s in single] == [6, 2]
    table = multitask.comparison_table([(multi, single)])
    gap = 100 * (multi["tasks"][1]["test_metric"] - single[1]["test_metric"])
    assert f"{gap:+.2f} pp" in table.splitlines()[3]
    # `compare` over the finished runs: no training, the same table, written to compare.md.
    assert multitask.compare(cfg, tmp / "full", 1, progress=False) == table
    assert (tmp / "full" / "compare.md").read_text() == table + "\n"
    with pytest.raises(ValueError, match="seeds"):
        multitask.compare(cfg, tmp / "full", 0)


def test_comparison_table_over_seeds_compares_means():
    def res(metric, *values):
        return [
            {"task": "t", "metric_name": metric, "test_metric": v, "steps_sampled": 4}
            for v in values
        ]

    # Accuracy: two seeds, multi 0.50 / 0.70 against single 0.60 / 0.62.
    runs = [({"tasks": res("accuracy", 0.5)}, res("accuracy", 0.6))]
    runs.append(({"tasks": res("accuracy", 0.7)}, res("accuracy", 0.62)))
    row = multitask.comparison_table(runs).splitlines()[2]
    assert "| 2 | 60.00 ± 10.00 % |" in row and "| 61.00 ± 1.00 % |" in row
    assert "| -1.00 pp | -10.00 / +8.00 |" in row
    # RMSE: the ratio of the means, not the mean of the ratios.
    runs = [({"tasks": res("rmse", 0.3)}, res("rmse", 0.1))]
    runs.append(({"tasks": res("rmse", 0.1)}, res("rmse", 0.3)))
    row = multitask.comparison_table(runs).splitlines()[2]
    assert "| 1.00× | 3.00× / 0.33× |" in row
    one = multitask.comparison_table(runs[:1]).splitlines()[2]
    assert "| 0.3 |" in one and "| 3.00× |  |" in one
    with pytest.raises(ValueError, match="disagree"):
        multitask.comparison_table(
            [({"tasks": res("rmse", 0.3)}, [{**res("rmse", 0.1)[0], "task": "u"}])]
        )
