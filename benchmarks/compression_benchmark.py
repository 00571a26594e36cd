"""Test accuracy against generator/target parameters on the embedded digits data (issue 25).

Usage (from the repo root; no data files needed; about 3 minutes of CPU time):

  XLA_FLAGS= .venv/bin/python benchmarks/compression_benchmark.py
  XLA_FLAGS= .venv/bin/python benchmarks/compression_benchmark.py --steps 200 --out /tmp/c.png

Trains one seed of each run below on scikit-learn's digits, all with the base model of
configs/digits_mlp.py (MLP 64-64, 8,970 params) and its schedule (50 initialisation + 400 task
steps, lr 3e-3): direct training, the UHN at five generator sizes (width h and index Fourier
frequencies F, from 625 to 100,097 params) and the conditional hypernetwork
(configs/digits_conditional.py) at three hidden widths. Each run is the ``uhn-jax train``
command printed before it, parsed and validated by the CLI's own code
(``uhn_jax.cli.check_command``); rerunning resumes, and a finished run is read back, not
retrained.

Prints a table (run, target params, generator params, generator/target, test accuracy, wall
seconds), writes it to ``WORKDIR/compression.md`` and draws test accuracy against the ratio,
with direct training as a dashed line, to ``--out`` (default
docs/figures/compression_digits.png; docs/compression.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from uhn_jax import cli  # noqa: E402
from uhn_jax.analysis import run_figures  # noqa: E402
from uhn_jax.training import results as results_lib  # noqa: E402
from uhn_jax.training import tasks, train  # noqa: E402

# (run name, config file, overrides): the runs, smallest generator first within each kind.
RUNS = (
    ("direct", "configs/digits_mlp.py", {"mode": "direct"}),
    ("uhn h=8 F=16", "configs/digits_mlp.py", {"generator.hidden": 8, "generator.n_freqs": 16}),
    ("uhn h=16 F=32", "configs/digits_mlp.py", {"generator.hidden": 16, "generator.n_freqs": 32}),
    ("uhn h=32 F=64", "configs/digits_mlp.py", {"generator.hidden": 32, "generator.n_freqs": 64}),
    ("uhn h=64 F=256", "configs/digits_mlp.py", {}),  # the config's own generator
    (
        "uhn h=128 F=128",
        "configs/digits_mlp.py",
        {"generator.hidden": 128, "generator.n_freqs": 128},
    ),
    # Not hidden=1: the generator's non-affine LayerNorm maps one feature to 0, so every
    # generated weight is the head's bias, 0 at init, and the network never leaves chance.
    ("conditional hidden=2", "configs/digits_conditional.py", {"hypernet.hidden_sizes": "(2,)"}),
    ("conditional hidden=4", "configs/digits_conditional.py", {"hypernet.hidden_sizes": "(4,)"}),
    ("conditional hidden=16", "configs/digits_conditional.py", {"hypernet.hidden_sizes": "(16,)"}),
)


def slug(name: str) -> str:
    """A run's directory name: ``uhn h=8 F=16`` -> ``uhn-h8-f16``."""
    return name.lower().replace("=", "").replace(" ", "-")


def argv(config: str, workdir: Path, overrides: dict, steps: int | None) -> list[str]:
    """The arguments of the run's ``uhn-jax train`` command."""
    flags = {**overrides, **({"train.steps": steps} if steps else {})}
    return ["train", "--config", config, "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in flags.items()
    ]


def shell(args: list[str]) -> str:
    """``args`` as a shell command line (a tuple quoted, as the Makefile's widths are)."""
    quoted = (f'{a.partition("=")[0]}="{a.partition("=")[2]}"' if "(" in a else a for a in args)
    return "uhn-jax " + " ".join(quoted)


def table(rows: list[dict]) -> str:
    """The markdown table of the runs' sizes, ratio and test accuracy."""
    lines = [
        "| run | target params | generator params | gen/target | test accuracy | wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = results_lib.format_ratio(results_lib.generator_target_ratio(r))
        lines.append(
            f"| {r['run']} | {r['num_target_params']:,} | {r['num_generator_params']:,} "
            f"| {ratio} | {100 * r['test_metric']:.2f} % | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/compression"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs/figures/compression_digits.png")
    parser.add_argument("--steps", type=int, default=None, help="train.steps (config's: 400)")
    parser.add_argument("--only", nargs="+", help="run names to train (default: all)")
    args = parser.parse_args()
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    dataset = None
    rows = []
    for name, config, overrides in runs:
        workdir = args.workdir / slug(name)
        run_argv = argv(config, workdir, overrides, args.steps)
        print(shell(run_argv), flush=True)
        # What `uhn-jax train` would run: the CLI's own parsing and validation of the line.
        exp = cli.check_command(run_argv).validated
        if dataset is None:  # every run reads the same digits split
            dataset = tasks.load_dataset(exp)
        out = train.run(exp, workdir, dataset=dataset, progress=False)
        # The figure labels a point by its size alone: the legend names the kind.
        rows.append({**out, "run": name, "size": name.partition(" ")[2]})
        print(
            f"  test accuracy {100 * out['test_metric']:.2f} %, {out['wall_s']:.0f} s", flush=True
        )
    shown = table(rows)
    print(shown)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "compression.md").write_text(shown + "\n")
    direct = [r["test_metric"] for r in rows if r["mode"] == "direct"]
    path = run_figures.ratio_scatter(
        rows,
        args.out,
        title="digits, MLP 64-64: test accuracy against generator size",
        baseline=direct[0] if direct else None,
        baseline_label="direct training",
        label_key="size",
    )
    print(path)


if __name__ == "__main__":
    main()
