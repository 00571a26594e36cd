"""A probe of bad inputs (issue 28, "Done when"): every row is one bad input, on the command
line, at the Python API or in a run's files, and the one clear error it must give, naming the
field, argument or file. Rows marked ``xfail`` are known faults, each with the fix it needs;
they are strict, so a fix makes them fail until the mark is removed.

The command-line rows run the real entry point (``uhn_jax.cli.main``), each in a process forked
from one runner (this file run as a script): absl and ml_collections keep their flags in
process-wide state, so in-process calls would see each other's flags.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fork_cli, preload_cli

ROOT = Path(__file__).resolve().parents[1]
TEST_CONFIG = str(ROOT / "configs" / "test.py")
#: The flags of the shared run (configs/test.py as a direct run of 6 steps).
RUN = ("--config", TEST_CONFIG, "--config.mode=direct", "--config.train.steps=6", "--noprogress")
T = ("--config", TEST_CONFIG)  # a config that validates, for the rows that override it

# ----------------------------------------------------------------------------- damage


def _truncate(name):
    def damage(path: Path) -> None:
        file = path / name
        file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])

    return damage


def _cut_last_line(name):
    def damage(path: Path) -> None:
        file = path / name
        text = file.read_text()
        last = text.rstrip("\n").rfind("\n") + 1
        file.write_text(text[: last + (len(text) - last) // 2])  # as if killed mid-write

    return damage


def _data_file(step_dir: Path) -> Path:
    """The largest array data file of a checkpoint (OCDBT's ``d/`` files)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def _flip_bit(*steps):
    def damage(path: Path) -> None:
        for step in steps:
            file = _data_file(path / "checkpoints" / str(step))
            data = bytearray(file.read_bytes())
            data[len(data) // 2] ^= 0x10
            file.write_bytes(bytes(data))

    return damage


def _write(name, text):
    def damage(path: Path) -> None:
        (path / name).write_text(text)

    return damage


def _delete_checkpoints(path: Path) -> None:
    shutil.rmtree(path / "checkpoints")


# ----------------------------------------------------------------------------- the table


def _known(reason):
    """The mark of a row that shows a known fault: ``pytest.param(*row, marks=_known(fix))``."""
    return pytest.mark.xfail(reason=reason, strict=True)


# (name, argv ({w}: a new workdir, {tmp}: a scratch dir, {run}: a copy of the shared
# finished run, {part}: of the shared run stopped at step 4), damage to that copy, exit code
# (None: any non-zero), regex the error line must match).
CLI_ROWS = [
    ("unknown_command", ("trian",), None, 2, r"^unknown command 'trian'"),
    ("no_workdir", ("train", *T), None, 1, r"^--workdir is required"),
    ("no_config", ("train", "--workdir", "{w}"), None, 1, r"^--config is required"),
    ("config_file_missing", ("train", "--workdir", "{w}", "--config", "{tmp}/nope.py"), None, 2,
     r"^error: --config: cannot load the config file: .*No such file.*nope\.py"),
    ("field_typo", ("train", "--workdir", "{w}", *T, "--config.train.stpes=3"), None, 2,
     r"^error: --config\.train\.stpes: the config has no field 'stpes'\. "
     r"Did you mean \"steps\""),
    ("group_typo", ("train", "--workdir", "{w}", *T, "--config.trian.steps=3"), None, 2,
     r"no field 'trian'\. Did you mean \"train\""),
    ("not_an_int", ("train", "--workdir", "{w}", *T, "--config.train.steps=abc"), None, 1,
     r"--config\.train\.steps=abc: invalid literal for int"),
    ("float_for_int", ("train", "--workdir", "{w}", *T, "--config.train.steps=1.5"), None, 1,
     r"--config\.train\.steps=1\.5: invalid literal for int"),
    ("steps_zero", ("train", "--workdir", "{w}", *T, "--config.train.steps=0"), None, 1,
     r"^bad config: train\.steps must be a positive int, got 0$"),
    ("lr_negative", ("train", "--workdir", "{w}", *T, "--config.train.lr=-1"), None, 1,
     r"^bad config: train\.lr must be in \(0\.0, 1\.0\], got -1\.0$"),
    ("batch_negative", ("train", "--workdir", "{w}", *T, "--config.train.batch_size=-4"),
     None, 1, r"^bad config: train\.batch_size must be a positive int, got -4$"),
    ("unknown_mode", ("train", "--workdir", "{w}", *T, "--config.mode=foo"), None, 1,
     r"^bad config: mode must be one of \(.*'uhn'\), got 'foo'$"),
    ("unknown_family", ("train", "--workdir", "{w}", *T, "--config.model.family=nope"), None,
     1, r"^bad config: model\.family must be one of \('mlp'.*got 'nope'"),
    ("unknown_dataset", ("train", "--workdir", "{w}", *T, "--config.data.name=nope"), None, 1,
     r"^bad config: unknown dataset 'nope'; data\.name must be one of digits"),
    ("bad_widths", ("train", "--workdir", "{w}", *T, "--config.model.widths=(16,-2)"), None, 1,
     r"^bad config: model\.widths must be a non-empty tuple of positive ints, got \(16, -2\)"),
    ("generator_hidden", ("train", "--workdir", "{w}", *T, "--config.generator.hidden=-1"),
     None, 1, r"^bad config: generator\.hidden must be a positive int, got -1$"),
    ("unknown_flag", ("train", "--workdir", "{w}", *T, "--nonsense"), None, 1,
     r"Unknown command line flag 'nonsense'"),
    ("seeds_not_int", ("compare", "--workdir", "{w}", *T, "--seeds=abc"), None, 1,
     r"flag --seeds=abc: invalid literal for int"),
    ("export_no_run", ("export", "--workdir", "{w}"), None, 1,
     r"^uhn-jax export: .*/config\.json not found: is .* a uhn-jax run directory\?"),
    ("plot_no_workdir", ("plot", "--workdir", "{w}"), None, 1,
     r"^uhn-jax plot: no such workdir: .*/w$"),
    ("summarize_nothing", ("summarize", "--workdir", "{tmp}"), None, 1,
     r"^uhn-jax summarize: no \*/compare\.json or \*/results\.json under "),
    ("analyze_no_run", ("analyze", "--workdir", "{w}"), None, 1,
     r"^uhn-jax analyze: .*/config\.json not found"),
    ("reproduce_unknown_check", ("reproduce", "--workdir", "{w}", "--only", "nope"), None, 1,
     r"^unknown check\(s\) \['nope'\]; the checks are \["),
    ("workdir_of_another_run", ("train", "--workdir", "{run}", *RUN, "--config.train.lr=0.01"),
     None, 1, r"^uhn-jax train: workdir .*/run holds a run with a different config "
     r"\(fields differ: train\.lr\)"),
    ("config_json_truncated", ("train", "--workdir", "{run}", *RUN), _truncate("config.json"), 1,
     r"^uhn-jax train: .*/run/config\.json is damaged \(not valid JSON"),
    ("results_json_truncated", ("train", "--workdir", "{run}", *RUN),
     _truncate("results.json"), 1,
     r"^uhn-jax train: .*/run/results\.json is damaged \(not valid JSON.*Delete it and rerun"),
    ("model_json_truncated", ("export", "--workdir", "{run}"), _truncate("model.json"), 1,
     r"^uhn-jax export: .*/run/model\.json is damaged \(not valid JSON"),
    ("checkpoints_deleted", ("train", "--workdir", "{part}", *RUN), _delete_checkpoints, 1,
     r"^uhn-jax train: .*/part/checkpoints is missing, but .*metrics\.jsonl logs steps up to 4"),
    ("every_checkpoint_damaged", ("train", "--workdir", "{part}", *RUN), _flip_bit(2, 4), 1,
     r"^uhn-jax train: no checkpoint in .*/part/checkpoints can be restored \(step 4: "),
    ("batch_larger_than_data",
     ("train", "--workdir", "{w}", *T, "--config.train.batch_size=5000"), None, 1,
     r"^uhn-jax train: train\.batch_size \(5000\) exceeds the 1437 training examples of digits"),
    ("compare_zero_seeds", ("compare", "--workdir", "{w}", *T, "--seeds=0"), None, 1,
     r"^uhn-jax compare: seeds must be >= 1, got 0$"),
    ("multitask_of_a_single_run_config", ("multitask", "--workdir", "{w}", *T), None, 1,
     r"^uhn-jax multitask: the config has no field\(s\) tasks, probs"),
    ("workdir_is_a_file", ("train", "--workdir", "{tmp}/a_file", *RUN), None, 1,
     r"^uhn-jax train: .*/a_file/\S+: Not a directory$"),
    ("config_syntax_error", ("train", "--workdir", "{w}", "--config", "{tmp}/syntax.py"),
     None, 2, r"^error: --config: cannot load the config file: .*/syntax\.py, line 1: "
     r"invalid syntax$"),
    ("config_without_get_config",
     ("train", "--workdir", "{w}", "--config", "{tmp}/no_get_config.py"), None, 2,
     r"^error: --config: cannot load the config file: .*/no_get_config\.py defines no "
     r"get_config\(\) function$"),
    ("config_argument_not_taken", ("train", "--workdir", "{w}", "--config", f"{TEST_CONFIG}:x"),
     None, 2, r"^error: --config: cannot load the config file: .*/test\.py:x: TypeError: "
     r"get_config\(\) takes 0 positional arguments but 1 was given$"),
]  # fmt: skip


def _rows(table):
    return [row if hasattr(row, "values") else pytest.param(*row, id=row[0]) for row in table]


# ----------------------------------------------------------------------------- fixtures


def _exp(**train):
    from conftest import load_config

    from uhn_jax import config as config_lib

    cfg = load_config("test")
    cfg.mode, cfg.train.steps = "direct", 6
    for key, value in train.items():
        cfg.train[key] = value
    return config_lib.from_config_dict(cfg)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shared run (``RUN``'s config), finished and stopped after step 4."""
    from uhn_jax.training import train

    tmp = tmp_path_factory.mktemp("shared")
    train.run(_exp(), tmp / "run", progress=False)
    train.run(_exp(), tmp / "part", progress=False, stop_after=4)
    return tmp


def _copy(runs: Path, name: str, dest: Path, damage) -> Path:
    shutil.copytree(runs / name, dest)
    if damage:
        damage(dest)
    return dest


@pytest.fixture(scope="module")
def cli_results(runs, tmp_path_factory):
    """Every command-line row's ``(exit code, stderr)``, from one runner process."""
    from conftest import subprocess_env

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "scratch").mkdir()
    (tmp / "scratch" / "a_file").write_text("not a directory\n")
    (tmp / "scratch" / "syntax.py").write_text("def get_config(:\n")
    (tmp / "scratch" / "no_get_config.py").write_text("x = 1\n")
    jobs = {}
    for param in _rows(CLI_ROWS):
        name, argv, damage, _, _ = param.values
        row = tmp / name
        row.mkdir()
        paths = {"w": row / "w", "tmp": tmp / "scratch"}
        for key in ("run", "part"):
            if "{" + key + "}" in argv:
                paths[key] = _copy(runs, key, row / key, damage)
        jobs[name] = [a.format(**paths) for a in argv]
    proc = subprocess.run(
        [sys.executable, __file__, str(tmp / "out")],
        input=json.dumps(jobs), cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "out" / "results.json").read_text())


# ----------------------------------------------------------------------------- the tests

#: Lines that are not the error: absl's usage header and hint, and log lines (orbax warns).
_NOISE = re.compile(r"^(USAGE: |Pass --helpshort|[IWE]\d{4} |WARNING:)")


@pytest.mark.parametrize("name, argv, damage, code, pattern", _rows(CLI_ROWS))
def test_command_line(name, argv, damage, code, pattern, cli_results):
    got_code, err = cli_results[name]
    assert "Traceback" not in err, err[-3000:]
    lines = [s.strip() for s in err.splitlines() if s.strip() and not _NOISE.match(s.strip())]
    assert lines, f"exit {got_code} and no error message"
    if name != "unknown_command":  # that one is followed by the list of commands
        assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    assert got_code == code if code is not None else got_code not in (0, None), got_code


# ----------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def api():
    """A small generator with its variables, an index, and small base models."""
    import jax
    import jax.numpy as jnp

    from uhn_jax import generator
    from uhn_jax.core import descriptors

    def make(**kw):
        ranges = descriptors.Ranges((0.0,) * 10, (100.0,) * 10)
        kw = {"index_ranges": ranges, "hidden": 8, "n_freqs": 16, "matmul_dtype": "float32", **kw}
        return generator.Generator(**kw)

    gen = make()
    index = jax.random.randint(jax.random.key(1), (40, 10), 0, 100).astype(jnp.float32)
    return {"make": make, "gen": gen, "v": generator.init(gen, jax.random.key(0)), "x": index}


def _generate(x=None, v=None, **kw):
    def action(api):
        from uhn_jax import generator

        index = api["x"] if x is None else x(api["x"])
        return generator.generate(api["gen"], api["v"] if v is None else v(api), index, **kw)

    return action


def _other_variables(**kw):
    def variables(api):
        import jax

        from uhn_jax import generator

        return generator.init(api["make"](**kw), jax.random.key(0))

    return variables


def _mlp_apply(shape):
    def action(api):
        import jax
        import jax.numpy as jnp

        from uhn_jax.models.mlp import MLP

        mlp = MLP(input_shape=(6, 5), num_classes=3, widths=(8,))
        return mlp.apply(mlp.init(jax.random.key(0)), jnp.ones(shape))

    return action


def _cnn_apply(api):
    import jax
    import jax.numpy as jnp

    from uhn_jax.models.cnn import CNN

    cnn = CNN(input_shape=(8, 8), num_classes=3, depths=(1,), widths=(4,))
    return cnn.apply(cnn.init(jax.random.key(0)), jnp.ones((2, 8, 8, 3)))


def _dataset(x_test=None, y_train=None):
    def action(api):
        from uhn_jax.data import images

        x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int32)
        xt = x if x_test is None else x_test
        return images.ArrayDataset("toy", x, y if y_train is None else y_train, xt, y, 2)

    return action


def _from_config(edit):
    def action(api):
        import uhn_jax
        from uhn_jax import config as config_lib

        cfg = config_lib.default_config_dict().to_dict()
        return uhn_jax.from_config_dict(edit(cfg))

    return action


def _set(group, field, value):
    def edit(cfg):
        cfg[group][field] = value
        return cfg

    return edit


def _mlp_layout():
    import jax

    from uhn_jax.core import layouts
    from uhn_jax.models.mlp import MLP

    return layouts.from_params(MLP(input_shape=(8,), num_classes=3, widths=(4,)).init(
        jax.random.key(0)))  # fmt: skip


def _unflatten(api):
    import jax.numpy as jnp

    from uhn_jax.core import layouts

    layout = _mlp_layout()
    return layouts.unflatten(jnp.zeros(layout.size + 3), layout)


def _flatten(api):
    import jax.numpy as jnp

    from uhn_jax.core import layouts

    return layouts.flatten({"a": jnp.zeros(3)}, _mlp_layout())


def _from_params(api):
    from uhn_jax.core import layouts

    return layouts.from_params({"a": "not an array"})


def _build_descriptors(api):
    import uhn_jax

    return uhn_jax.build_descriptors(_mlp_layout(), "nope", {})


def _layer_spec(api):
    from uhn_jax.core import descriptors

    return descriptors.LayerSpec("fc", descriptors.LayerType.LINEAR, (("output_size", 3),))


def _multitask(cfg):
    def action(api):
        import uhn_jax

        return uhn_jax.run_multitask(cfg, "/nonexistent/never/written")

    return action


def _compare_zero_seeds(api):
    import uhn_jax

    return uhn_jax.compare(_exp(), "/nonexistent/never/written", seeds=0)


def _mlp(api):
    from uhn_jax.models.mlp import MLP

    return MLP(input_shape=(0,), num_classes=3)


API_ROWS = [
    ("descriptors_out_of_range", _generate(x=lambda x: x.at[3, 4].set(250.0)), ValueError,
     r"index_N10: .*'input_idx'.*250.*\[0, 100\].*out_of_range='clip'"),
    ("descriptors_bool", _generate(x=lambda x: x.astype(bool)), TypeError,
     r"index_N10 must be a float or signed int.*dtype bool"),
    ("descriptors_uint8", _generate(x=lambda x: x.astype(np.uint8)), TypeError,
     r"index_N10 must be a float or signed int.*dtype uint8"),
    ("descriptors_complex", _generate(x=lambda x: x.astype(np.complex64)), TypeError,
     r"index_N10 must be a float or signed int.*dtype complex64"),
    ("descriptors_nan", _generate(x=lambda x: x.at[2, 0].set(np.nan)), ValueError,
     r"index_N10 must be finite.*index \(2, 0\)"),
    ("descriptors_flat", _generate(x=lambda x: x.reshape(-1)), ValueError,
     r"index_N10 must have shape \(N, 10\), got shape \(400,\)"),
    ("variables_of_another_size", _generate(v=_other_variables(n_freqs=32)), ValueError,
     r"variables.*\['constants'\]\['index_B'\] has shape \(10, 32\).*\(10, 16\)"),
    ("variables_missing_collection", _generate(v=lambda api: {"params": api["v"]["params"]}),
     ValueError, r"variables\['constants'\]\['index_B'\] is missing"),
    ("chunk_size_negative", _generate(chunk_size=-1), ValueError,
     r"chunk_size must be an int >= 0 or None \(0 = automatic\), got -1"),
    ("out_of_range_mode", _generate(out_of_range="raise"), ValueError,
     r"out_of_range must be one of .*'raise'"),
    ("generator_n_freqs_zero", lambda api: api["make"](n_freqs=0), ValueError,
     r"Generator\.n_freqs"),
    ("generator_hidden_negative", lambda api: api["make"](hidden=-3), ValueError,
     r"Generator\.hidden"),
    ("mlp_input_shape_zero", _mlp, ValueError, r"MLP input_shape"),
    ("layer_spec_without_input_size", _layer_spec, ValueError,
     r"layer 'fc' of kind 'linear' needs the structure field 'input_size' > 0"),
    ("mlp_input_of_wrong_shape", _mlp_apply((2, 7, 5)), ValueError,
     r"MLP .*input_shape=\(6, 5\).*got shape \(2, 7, 5\)"),
    ("cnn_input_of_wrong_shape", _cnn_apply, ValueError,
     r"CNN .*input_shape=\(8, 8\).*got shape \(2, 8, 8, 3\)"),
    ("dataset_nan_inputs", _dataset(x_test=np.full((4, 3), np.nan, np.float32)), ValueError,
     r"toy: x_test must be finite.*index \(0, 0\)"),
    ("dataset_labels_out_of_range", _dataset(y_train=np.full(4, 5, np.int32)), ValueError,
     r"toy: y_train labels span \[5, 5\], outside \[0, 2\) for num_classes=2"),
    ("dataset_lengths_differ", _dataset(y_train=np.zeros(3, np.int32)), ValueError,
     r"toy: x_train has 4 examples but y_train has 3"),
    ("config_unknown_field", _from_config(_set("train", "foo", 3)), ValueError,
     r"unknown config field\(s\) train\.foo; known fields here: batch_size"),
    ("config_wrong_type", _from_config(_set("train", "lr", "fast")), ValueError,
     r"config field train\.lr must be float, got 'fast'"),
    ("config_not_a_mapping", _from_config(lambda cfg: 42), TypeError,
     r"from_config_dict: cfg must be a mapping .*got int"),
    ("unflatten_wrong_length", _unflatten, ValueError,
     r"expected a flat vector of length 51, got shape \(54,\)"),
    ("flatten_wrong_structure", _flatten, ValueError,
     r"params structure .*'a'.* does not match layout"),
    ("layout_of_a_non_array", _from_params, TypeError, r"leaf \['a'\] is a str, not an array"),
    ("descriptors_of_a_string", _build_descriptors, TypeError,
     r"layers must be a sequence of LayerSpec, got 'nope'"),
    ("multitask_config_without_tasks", _multitask({}), ValueError,
     r"multitask: the config has no field\(s\) tasks, probs, data_dir, seed, generator, train"),
    ("multitask_probs_per_task", _multitask(
        {"tasks": ("test",), "probs": (1.0, 2.0), "data_dir": "", "seed": 0, "generator": {},
         "train": {}}), ValueError, r"multitask: 1 tasks and 2 probs; give one per task"),
    ("compare_zero_seeds", _compare_zero_seeds, ValueError, r"seeds must be >= 1, got 0"),
]  # fmt: skip


@pytest.mark.parametrize("name, action, error, pattern", _rows(API_ROWS))
def test_api(name, action, error, pattern, api):
    with pytest.raises(error, match=pattern):
        action(api)


# ----------------------------------------------------------------------------- run files


def _train(**train):
    def action(path: Path):
        from uhn_jax.training import train as train_lib

        return train_lib.run(_exp(**train), path, progress=False)

    return action


def _larger_batch(path: Path):
    _train(batch_size=5000)(path)


# (name, shared run to copy (None: none), damage, action on the copy, error (None: the run
# finishes), regex the error message (or, without an error, the output) must match; {path}
# is the copy's path).
FILE_ROWS = [
    ("config_json_truncated", "run", _truncate("config.json"), _train(), "WorkdirError",
     r"^{path}/config\.json is damaged \(not valid JSON: .*\)\. Restore it from a copy"),
    ("results_json_truncated", "run", _truncate("results.json"), _train(), "WorkdirError",
     r"^{path}/results\.json is damaged \(not valid JSON: .*\)\. Delete it and rerun"),
    ("checkpoints_deleted", "part", _delete_checkpoints, _train(), "WorkdirError",
     r"^{path}/checkpoints is missing, but {path}/metrics\.jsonl logs steps up to 4"),
    ("every_checkpoint_bit_flipped", "part", _flip_bit(2, 4), _train(), "DamagedCheckpointError",
     r"^no checkpoint in {path}/checkpoints can be restored \(step 4: default/.* does not "
     r"match its sha256 .*; step 2: "),
    ("other_config", "part", None, _train(lr=0.01), "WorkdirError",
     r"^workdir {path} holds a run with a different config \(fields differ: train\.lr\)"),
    ("batch_larger_than_data", None, None, _larger_batch, ValueError,
     r"^train\.batch_size \(5000\) exceeds the 1437 training examples of digits"),
    ("latest_checkpoint_bit_flipped", "part", _flip_bit(4), _train(), None,
     r"checkpoint {path}/checkpoints/4 \(step 4\) is damaged: default/.* does not match its "
     r"sha256 [\s\S]*\n\[uhn_jax\] resuming {path} from step 2"),
    ("latest_checkpoint_metadata_emptied", "part", _write("checkpoints/4/default/_METADATA", ""),
     _train(), None, r"checkpoint {path}/checkpoints/4 \(step 4\) is damaged: "
     r"default/_METADATA does not match its sha256"),
    ("latest_checkpoint_manifest_damaged", "part", _truncate("checkpoints/4/sha256.json"),
     _train(), None, r"checkpoint {path}/checkpoints/4 \(step 4\) is damaged: its manifest "
     r"sha256\.json is damaged"),
    ("metrics_jsonl_cut_short", "part", _cut_last_line("metrics.jsonl"), _train(), None,
     r"warning: {path}/metrics\.jsonl line 2 is damaged; dropped: '\{{\"step\": 4, "),
    ("config_json_not_a_config", "part", _write("config.json", "[1, 2]\n"), _train(),
     "WorkdirError", r"^{path}/config\.json is damaged \(not a config: a JSON object with the "
     r"groups data, model, generator, hypernet, adapt, train expected, got \[1, 2\]\)\. "
     r"Restore it"),
]  # fmt: skip


@pytest.mark.parametrize("name, source, damage, action, error, pattern", _rows(FILE_ROWS))
def test_run_files(name, source, damage, action, error, pattern, runs, tmp_path, capsys):
    from uhn_jax.training import checkpoint, workdir

    errors = {"WorkdirError": workdir.WorkdirError}
    errors["DamagedCheckpointError"] = checkpoint.DamagedCheckpointError
    path = _copy(runs, source, tmp_path / source, damage) if source else tmp_path / "new"
    pattern = pattern.replace("{path}", re.escape(str(path))).replace("{{", "{")
    if error is None:  # the run recovers, saying what it did about the damage
        capsys.readouterr()
        assert action(path)["steps"] == 6
        assert re.search(pattern, capsys.readouterr().out), capsys.readouterr().out
        return
    with pytest.raises(errors.get(error, error)) as info:
        action(path)
    assert re.search(pattern, str(info.value)), str(info.value)
    if source is None:  # a run failing validation leaves no workdir behind
        assert not path.exists()


def test_a_kill_before_results_json_does_not_log_the_final_line_twice(runs, tmp_path):
    # A kill between the final test line's append to metrics.jsonl and results.json leaves
    # the finished run without results.json; the relaunch recomputes them from the final
    # checkpoint and must not append the final line again.
    path = _copy(runs, "run", tmp_path / "run", lambda p: (p / "results.json").unlink())
    before = (path / "metrics.jsonl").read_text().splitlines()
    final = json.loads(before[-1])
    assert set(final) == {"step", "test_accuracy"}, final  # the final line is the last
    again = _train()(path)
    assert (
        again["test_metric"]
        == json.loads((runs / "run" / "results.json").read_text())["test_metric"]
    )
    assert (path / "metrics.jsonl").read_text().splitlines() == before


def test_the_probe_has_at_least_40_rows():
    assert len(CLI_ROWS) + len(API_ROWS) + len(FILE_ROWS) >= 40


# ----------------------------------------------------------------------------- the runner


def _run_cli(jobs: dict[str, list[str]], out: Path) -> None:
    """Runs each job's ``uhn-jax`` argv in a forked process; writes ``{name: [exit code,
    stderr]}`` to ``out/results.json``."""
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, argv in jobs.items():
        log = out / f"{name}.err"
        pid = fork_cli(argv, log.with_suffix(".out"), log)
        _, status = os.waitpid(pid, 0)
        results[name] = [os.waitstatus_to_exitcode(status), log.read_text()]
    (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    preload_cli()  # once, before any fork

    _run_cli(json.loads(sys.stdin.read()), Path(sys.argv[1]))
