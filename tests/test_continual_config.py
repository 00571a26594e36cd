"""The continual config (uhn_jax.training.continual_config, through continual.validate): every
bad field is refused naming it, the presets validate, and the UHN generator's and task
inference's constraints hold, all before anything trains."""

import pytest
from conftest import load_config, small_continual_config

from uhn_jax import config as config_lib
from uhn_jax.training import continual

STEPS = 20  # small_continual_config's steps per task


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hnet.embedding_size", 0, "hnet.embedding_size must be a positive int, got 0"),
        ("hnet.chunk_size", 0, "hnet.chunk_size must be a positive int"),
        ("hnet.beta", -0.1, r"hnet.beta must be a number >= 0, got -0.1"),
        ("hnet.hidden_sizes", (), "hnet.hidden_sizes must name at least one"),
        ("hnet.generator", "mlp", r"hnet.generator must be one of \('chunked', 'uhn'\), got 'mlp'"),
        ("continual.num_tasks", 0, "continual.num_tasks must be a positive int"),
        ("continual.steps_per_task", 0, "continual.steps_per_task must be a positive int"),
        ("continual.benchmark", "rotated", "continual.benchmark must be one of"),
        ("method", "lwf", "method must be one of"),
        ("ewc.lam", -1.0, r"ewc.lam must be a number >= 0, got -1.0"),
        ("ewc.lam", float("inf"), "ewc.lam must be a finite number"),
        ("ewc.gamma", 0.0, r"ewc.gamma must be in \(0.0, 1.0\], got 0.0"),
        ("ewc.gamma", 1.5, r"ewc.gamma must be in \(0.0, 1.0\]"),
        ("ewc.fisher_examples", 0, "ewc.fisher_examples must be a positive int, got 0"),
        ("train.lr", 0.0, r"train.lr must be in \(0.0"),
        ("train.warmup_steps", STEPS, "train.warmup_steps .* continual.steps_per_task"),
        ("continual.permutation_seeds", (1,), "continual.permutation_seeds is read by"),
    ],
)
def test_bad_configs_name_the_field(field, value, message):
    cfg = small_continual_config()
    group, _, name = field.rpartition(".")
    (cfg[group] if group else cfg)[name] = value
    with pytest.raises(ValueError, match=message):
        continual.validate(cfg)


def test_task_inference_needs_a_network_per_task():
    for method in ("finetune", "ewc"):
        cfg = small_continual_config(method)
        cfg.continual.task_inference = True
        with pytest.raises(ValueError, match=f"continual.task_inference .* method '{method}'"):
            continual.validate(cfg)
    cfg = small_continual_config("separate")
    cfg.continual.task_inference = True
    assert continual.validate(cfg).task_inference is True
    cfg = cfg.to_dict()  # a plain mapping (a ConfigDict refuses the type itself)
    cfg["continual"]["task_inference"] = "yes"
    with pytest.raises(ValueError, match="continual.task_inference must be True or False"):
        continual.validate(cfg)


def test_permutation_seeds_that_repeat_a_task_are_refused():
    cfg = small_continual_config(benchmark="permuted")
    cfg.continual.num_tasks = 4
    cfg.continual.permutation_seeds = (1, 2, 1)
    with pytest.raises(
        ValueError, match=r"continual.permutation_seeds repeats seed 1: tasks \[1, 3\]"
    ):
        continual.validate(cfg)
    cfg.continual.permutation_seeds = (1, 2)
    with pytest.raises(ValueError, match="continual.permutation_seeds needs one seed per task"):
        continual.validate(cfg)


def test_unknown_fields_and_single_run_mode_are_refused():
    cfg = small_continual_config().to_dict()
    cfg["train"]["steps"] = 5
    with pytest.raises(ValueError, match="unknown field.*train.steps"):
        continual.validate(cfg)
    for mode in ("continual", "ewc"):
        exp = load_config("test")
        exp.mode = mode
        with pytest.raises(ValueError, match=f"mode '{mode}' trains a sequence of tasks"):
            config_lib.from_config_dict(exp)


def test_uhn_config_errors_name_the_field():
    cfg = small_continual_config(generator="uhn")
    cfg.generator.structure = False
    with pytest.raises(ValueError, match="set generator.structure=True"):
        continual.validate(cfg)
    cfg = small_continual_config(generator="uhn")
    cfg.generator.chain_depth = 1
    with pytest.raises(ValueError, match="generator.chain_depth must be 0 with hnet.generator"):
        continual.validate(cfg)
    cfg = small_continual_config(generator="uhn")
    cfg.generator.n_freqs = 0
    with pytest.raises(ValueError, match="generator.n_freqs must be a positive int"):
        continual.validate(cfg)
    cfg = small_continual_config()
    cfg.method = "hnet_uhn"  # the preset's name, not a method
    with pytest.raises(ValueError, match="method 'hnet_uhn' is a preset .* hnet.generator='uhn'"):
        continual.validate(cfg)


@pytest.mark.parametrize(
    "arg, mode",
    [
        ("split,digits", "continual"),
        ("split,digits,hnet_uhn", "continual"),
        ("split,mnist", "continual"),
        ("permuted,mnist,hnet_uhn", "continual"),
        ("permuted,mnist", "continual"),
        ("permuted,digits,finetune", "direct"),
        ("split,digits,ewc", "ewc"),
        ("permuted,mnist,ewc", "ewc"),
        ("split,digits,separate", "direct"),
    ],
)
def test_config_variants_validate(arg, mode):
    spec = continual.validate(load_config("continual", arg))
    assert spec.num_tasks == (5 if arg.startswith("split") else 10)
    assert spec.exp.train.steps == spec.steps_per_task and spec.exp.train.init_steps == 0
    assert spec.exp.mode == mode and spec.label == (arg.split(",") + ["hnet"])[2]
    assert spec.hnet.generator == ("uhn" if arg.endswith("hnet_uhn") else "chunked")
    assert spec.task_inference is False and spec.ewc.lam >= 0
    with pytest.raises(ValueError, match="configs/continual.py takes"):
        load_config("continual", "split")
