"""Every ``uhn-jax`` command in README.md and docs/*.md is valid as written, and the fast ones
run (issue 27).

**Extraction** (:func:`doc_commands`). The shell of a doc is each fenced code block with no
language or a shell one (``bash``, ``sh``, ``shell``, ``console``) and each inline code span
outside them. A command is the words from ``uhn-jax`` to the end of its shell command (``;``,
``&``, ``|``, ``#``); a bare ``uhn-jax`` (the program's name) is none. The rules:

- lines ending in ``\\`` are joined, and so are the lines an inline span wraps over;
- ``NAME=value`` lines and ``for NAME in a b c; do`` loops of the same block or span define
  ``$NAME`` / ``${NAME}``: a command is checked for every value of its loops;
- ``[--flag value]`` (an optional part) is checked with the part;
- ``a|b`` inside a word (alternatives in prose, ``--config.seed=0|1|2``) is checked for each;
- the upper-case placeholders of :data:`PLACEHOLDERS` (``--workdir W``, ``--seeds N``,
  ``configs/digits_recursive.py:K``, ``data_dir=DATA``) stand for a value of their kind;
- ``...`` ends what is checked of a command (``uhn-jax compare ... --match_params`` is checked
  as ``uhn-jax compare``), and a flag whose value it is goes with it (``--workdir ...``).

**Checks** (every command, :func:`test_doc_command_is_valid`, parametrized by doc and line):
:func:`uhn_jax.cli.check_command`, the parsing and validation that ``uhn-jax`` itself does
before it runs anything: the command exists, every flag is one it accepts, the ``--config
FILE[:ARG]`` file loads, every ``--config.a.b=value`` override names a field and parses, and
the config validates (train, compare: the experiment; multitask: every task's; reproduce: the
chosen checks'). A fenced block holds commands to copy and run, so they must be complete (the
flags a command requires given); an inline span in prose (``uhn-jax plot --kernels``) and a
command cut at ``...`` are excerpts, checked for what they say. Nothing reads a data file, so
no check needs the data directory; :func:`test_doc_data_directory_exists` checks that each
data directory the docs name under ``../shared/data`` is in the data directory
(``UHN_DATA_DIR``, :func:`conftest.real_data_dir`).

**Runs** (:data:`RUN_SCOPES`; about 45 s of the file's 60 s of CPU): the README's command-line
block (``train`` direct and ``export`` of its workdir, ``compare`` and ``plot`` of its workdir:
the digits config, and the four commands that write or read runs) and the KAN loop of
docs/results.md (``compare`` of the first formula, then ``summarize`` of the loop's parent
directory: the only ``summarize`` in the docs over runs whose data needs no files). In a scope,
a command runs when its config's data needs no files (:data:`EMBEDDED_CONFIGS`) or when it
reads a workdir that an earlier command of the scope wrote; each runs for the first value of
its loops and alternatives, in a temporary directory holding a ``configs`` link, with
:data:`FAST` appended (a few steps, one seed), and must exit 0 and write what it says it writes
(:func:`_assert_wrote`). The other scopes would each add a train of 5-15 s of CPU (the Flax
adapters, a model set, a recursive chain) or read real data for minutes; their commands are
checked, not run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fork_cli, preload_cli, real_data_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_FENCES = ("", "bash", "sh", "shell", "console")
#: The docs' placeholders and the value each is checked with.
PLACEHOLDERS = {
    "W": "runs/w",  # a workdir
    "B": "runs/b",  # a second (baseline) workdir
    "DIR": "runs/w/out",  # an output directory
    "FILE": "configs/digits_flax.py",  # a config file (one that registers a family)
    "DATA": "../shared/data",  # the data directory
    "N": "3",  # seeds
    "K": "2",  # the recursive chain's depth
    "S": "0",  # a seed
}
#: Where the docs put the data directory (the Makefile's ``DATA``); tests use ``UHN_DATA_DIR``.
DOCS_DATA = "../shared/data"
#: The configs whose data needs no files; a documented command on them can run in the test.
EMBEDDED_CONFIGS = re.compile(r"^configs/(digits_\w+|kan_formula)\.py(:.*)?$")
#: Appended to a command that runs: a few steps (one of the initialisation stage), one seed.
FAST = (
    "--config.train.steps=4",
    "--config.train.init_steps=1",
    "--config.train.warmup_steps=0",
    "--config.train.eval_every=0",
)
#: What ``plot`` draws for a compare workdir of an MLP (the README: curves, weight histograms,
#: the initialisation stage's fit).
PLOTS = ("train_accuracy.png", "test_accuracy.png", "loss.png", "init_fit.png", "weights.png")
#: The scopes whose fast commands run: (doc, a command of the scope, the commands that run).
RUN_SCOPES = (
    (
        "README.md",
        "uhn-jax train --config configs/digits_mlp.py --workdir runs/x",
        ("train", "compare", "export", "plot"),
    ),
    (
        "docs/results.md",
        "uhn-jax compare --config configs/kan_formula.py:$f",
        ("compare", "summarize"),
    ),
)

# ----------------------------------------------------------------------------- extraction


@dataclasses.dataclass(frozen=True)
class DocCommand:
    """One command of a doc: where it is, as written, and the argvs (after ``uhn-jax``) it is
    checked as, one per value of its loops and alternatives (the first is the one run)."""

    doc: str
    line: int
    text: str
    argvs: tuple[tuple[str, ...], ...]
    complete: bool
    scope: int  # the index of its block or span in the doc
    error: str = ""  # what stops it from being expanded (an undefined variable)


def _scopes(text: str) -> Iterator[tuple[bool, list[tuple[int, str]]]]:
    """Each fenced shell block and inline code span of a markdown text: whether it is fenced,
    and its lines as ``(line number, text)`` (continued lines joined, with their newlines)."""
    lines = text.splitlines()
    prose = list(lines)
    fence = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence, info = i, stripped[3:].strip()
            prose[i] = ""
        elif fence is not None:
            prose[i] = ""
            if stripped.startswith("```"):
                if info in SHELL_FENCES:
                    yield True, _logical_lines(lines[fence + 1 : i], fence + 2)
                fence = None
    joined = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", joined):
        if "uhn-jax" in m[1]:
            yield False, [(joined[: m.start()].count("\n") + 1, m[1])]


def _logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    out, start, parts = [], None, []
    for n, line in enumerate(lines, first):
        start = n if start is None else start
        parts.append(line)
        if not line.endswith("\\"):
            out.append((start, "\n".join(parts)))
            start, parts = None, []
    return out + ([(start, "\n".join(parts))] if parts else [])


def _variables(scope: list[tuple[int, str]]) -> dict[str, list[str]]:
    """``$NAME``'s values: ``NAME=value`` words of assignment lines, ``for NAME in ...; do``."""
    variables = {}
    for _, raw in scope:
        text = _shell(raw)
        for name, values in re.findall(r"\bfor\s+(\w+)\s+in\s+([^;]*?)\s*;\s*do\b", text):
            variables[name] = values.split()
        if re.match(r"\s*(export\s+)?\w+=", text):
            variables.update((k, [v]) for k, v in re.findall(r"(\w+)=(\S+)", text))
    return variables


def _shell(raw: str) -> str:
    """A logical line as one line of shell, optional ``[--flag ...]`` parts kept."""
    text = raw.replace("\\\n", " ").replace("\n", " ")
    return re.sub(r"\[(-[^\[\]]*)\]", r"\1", text)


def _commands(raw: str) -> Iterator[tuple[int, list[str]]]:
    """The ``uhn-jax`` commands of a logical line: the newlines before each, and its words.
    A line without one is not lexed (a diagram or prose in a plain block may hold a stray
    quote)."""
    if "uhn-jax" not in raw:
        return
    lexer = shlex.shlex(_shell(raw), posix=True, punctuation_chars=";&")
    lexer.whitespace_split = True
    words, command = list(lexer), None
    starts = [m.start() for m in re.finditer(r"uhn-jax", raw)]
    for word in [*words, ";"]:
        if command is not None and (word in ("|", "||") or set(word) <= set(";&")):
            yield raw[: starts.pop(0)].count("\n"), command
            command = None
        elif command is not None:
            command.append(word)
        elif word == "uhn-jax":
            command = []


def _expand(words: list[str], variables: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Every argv that ``words`` stands for: each value of its ``$variables`` and each
    alternative of its ``a|b`` words, placeholders replaced."""
    used = sorted({v for w in words for v in re.findall(r"\$\{?(\w+)", w)})
    undefined = [v for v in used if v not in variables]
    if undefined:
        raise ValueError(f"undefined shell variable(s) {undefined}")
    argvs = []
    for values in itertools.product(*(variables[v] for v in used)):
        scope = dict(zip(used, values, strict=True))
        expanded = [re.sub(r"\$\{?(\w+)\}?", lambda m, scope=scope: scope[m[1]], w) for w in words]
        argvs += itertools.product(*map(_word_values, expanded))
    return argvs


def _word_values(word: str) -> list[str]:
    """The values a word stands for: its placeholder replaced, each of its ``a|b``."""
    word = re.sub(r"(?<![\w./-])([A-Z]+)(?![\w./-])", lambda m: PLACEHOLDERS.get(m[1], m[1]), word)
    if "|" not in word:
        return [word]
    head, _, tail = word.partition("|")
    cut = max(head.rfind("="), head.rfind(":")) + 1
    return [head, *(head[:cut] + alt for alt in tail.split("|"))]


def _takes_a_value(word: str) -> bool:
    """Whether ``word`` is a flag of ``uhn-jax`` that takes a value (not a boolean)."""
    from absl import flags

    from uhn_jax import cli  # noqa: F401  (defines the flags)

    name = word.removeprefix("--")
    return word.startswith("--") and name in flags.FLAGS and not flags.FLAGS[name].boolean


def doc_commands(path: Path) -> list[DocCommand]:
    """Every ``uhn-jax`` command of the markdown file ``path`` (see the module docstring)."""
    doc, out = (str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name), []
    for index, (fenced, scope) in enumerate(_scopes(path.read_text())):
        variables = _variables(scope)
        for line, raw in scope:
            for offset, words in _commands(raw):
                if not words:
                    continue  # the program's name
                cut = next((i for i, w in enumerate(words) if "..." in w), len(words))
                cut -= cut < len(words) and _takes_a_value(words[cut - 1])  # `--workdir ...`
                text = " ".join(raw.replace("\\\n", " ").split())  # the line, as written
                try:
                    argvs, error = tuple(_expand(words[:cut], variables)), ""
                except ValueError as e:
                    argvs, error = (), str(e)
                complete = fenced and cut == len(words)
                out.append(DocCommand(doc, line + offset, text, argvs, complete, index, error))
    return out


COMMANDS = [c for path in DOCS for c in doc_commands(path)]
LOCATIONS = sorted({(c.doc, c.line) for c in COMMANDS}, key=lambda d: (d[0] != "README.md", d))


def _value(argv: tuple[str, ...], flag: str) -> str | None:
    """The last value of ``flag`` in ``argv`` (``--flag value`` or ``--flag=value``)."""
    found = None
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            found = argv[i + 1]
        elif word.startswith(flag + "="):
            found = word.split("=", 1)[1]
    return found


# ----------------------------------------------------------------------------- checks


def _check(command: DocCommand) -> None:
    from uhn_jax import cli

    where = f"{command.doc}:{command.line}: {command.text}"
    assert not command.error, f"{where}\n  {command.error}"
    for argv in command.argvs:
        try:
            cli.check_command(argv, complete=command.complete)
            continue
        except cli.CommandError as e:
            error = str(e)
        checked = f"uhn-jax {shlex.join(argv)}"
        pytest.fail(f"{where}\n  checked as: {checked}\n  error: {error}", pytrace=False)


@pytest.mark.parametrize("doc, line", LOCATIONS, ids=[f"{d}:{n}" for d, n in LOCATIONS])
def test_doc_command_is_valid(doc, line, monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' paths are relative to the checkout
    for command in COMMANDS:
        if (command.doc, command.line) == (doc, line):
            _check(command)


def test_every_documented_command_is_found():
    """The extraction finds the docs' commands: each of the CLI's commands, in fenced blocks
    and in prose, including the loops' (a rule that stopped matching would leave them
    unchecked)."""
    from uhn_jax import cli

    names = {c.argvs[0][0] for c in COMMANDS if c.argvs and c.argvs[0]}
    assert names >= set(cli.COMMANDS), set(cli.COMMANDS) - names
    assert sum(c.complete for c in COMMANDS) >= 40 and len(COMMANDS) >= 80, len(COMMANDS)
    kan = next(c for c in COMMANDS if "configs/kan_formula.py:$f" in c.text)
    assert len(kan.argvs) == 15  # every formula of the loop


SAMPLE = """\
Prose: `uhn-jax plot --kernels` of `uhn-jax`; `uhn-jax train --config configs/test.py
--config.seed=0|1`.

```bash
D=../shared/data/mnist
for s in 0 1; do uhn-jax train --config configs/test.py \\
    --workdir runs/x$s --config.seed=$s [--config.data.data_dir=$D]; done
uhn-jax compare --config configs/test.py --workdir W --seeds N ... --bogus
uhn-jax train --config configs/test.py --workdir runs/y --config.train.stpes=3
uhn-jax train --config configs/test.py --workdir runs/y --config.train.steps=$UNSET
```

```python
x = 1  # uhn-jax train: not a shell block
```
"""


def test_the_rules_on_a_sample_doc_and_a_wrong_command_fails(tmp_path, monkeypatch):
    (tmp_path / "sample.md").write_text(SAMPLE)
    commands = doc_commands(tmp_path / "sample.md")
    assert [(c.line, c.complete) for c in commands] == [
        (6, True), (8, False), (9, True), (10, True), (1, False), (1, False)
    ]  # fmt: skip
    loop, excerpt, typo, unset, kernels, seeds = commands
    assert loop.argvs == tuple(
        ("train", "--config", "configs/test.py", "--workdir", f"runs/x{s}", f"--config.seed={s}",
         "--config.data.data_dir=../shared/data/mnist")
        for s in "01"
    )  # fmt: skip
    assert excerpt.argvs == (
        ("compare", "--config", "configs/test.py", "--workdir", "runs/w", "--seeds", "3"),
    )
    assert "undefined shell variable(s) ['UNSET']" in unset.error
    assert kernels.argvs == (("plot", "--kernels"),)
    assert [a[-1] for a in seeds.argvs] == ["--config.seed=0", "--config.seed=1"]
    monkeypatch.chdir(ROOT)
    for command in (loop, excerpt, kernels, seeds):
        _check(command)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)sample\.md:9: .*no field 'stpes'"):
        _check(typo)
    with pytest.raises(pytest.fail.Exception, match="--workdir is required"):
        _check(dataclasses.replace(excerpt, complete=True, argvs=(excerpt.argvs[0][:3],)))


def _data_dirs() -> list[tuple[str, str]]:
    """Each data directory the docs name under :data:`DOCS_DATA`, relative to it, with the
    first place it is named."""
    flags = ("--data_dir", "--config.data.data_dir", "--config.data_dir")
    found = {}
    for c in COMMANDS:
        for argv in c.argvs:
            for value in filter(None, (_value(argv, f) for f in flags)):
                if value == DOCS_DATA or value.startswith(DOCS_DATA + "/"):
                    found.setdefault(value[len(DOCS_DATA) :].strip("/"), f"{c.doc}:{c.line}")
    return sorted(found.items())


@pytest.mark.parametrize("subdir, where", _data_dirs(), ids=[s or "." for s, _ in _data_dirs()])
def test_doc_data_directory_exists(subdir, where):
    assert real_data_dir(subdir).is_dir(), where


# ----------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
    """A documented command run in the test: the command, the argv run and the result."""

    command: DocCommand
    argv: tuple[str, ...]
    cwd: Path
    code: int | None = None
    stdout: str = ""
    stderr: str = ""


def _scope_runs(doc: str, first: str, cwd: Path) -> list[Run]:
    """The commands that run of the scope of ``doc`` that holds the command ``first``
    (the module docstring says which), with the argv each runs."""
    holder = next((c for c in COMMANDS if c.doc == doc and first in c.text), None)
    assert holder is not None, f"no command {first!r} in {doc}: update RUN_SCOPES"
    runs, written = [], []
    for command in COMMANDS:
        if (command.doc, command.scope) != (doc, holder.scope):
            continue
        argv = command.argvs[0]
        config, workdir = _value(argv, "--config"), Path(_value(argv, "--workdir") or ".")
        if config is None:
            reads = any(w.is_relative_to(workdir) or workdir.is_relative_to(w) for w in written)
            if not reads:
                continue
        elif not EMBEDDED_CONFIGS.match(config):
            continue
        written.append(workdir)
        fast = (*FAST, *(("--seeds=1",) if argv[0] == "compare" else ())) if config else ()
        runs.append(Run(command, (*argv, *fast, "--noprogress"), cwd))
    return runs


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory) -> dict[tuple[str, str], list[Run]]:
    """The runs of every scope of :data:`RUN_SCOPES`, each in its own directory with a
    ``configs`` link, from one runner process (this file as a script) that forks each
    command: a scope stops at its first failing command."""
    from conftest import subprocess_env

    tmp = tmp_path_factory.mktemp("doc_runs")
    scopes = {}
    for i, (doc, first, _) in enumerate(RUN_SCOPES):
        cwd = tmp / f"scope{i}"
        cwd.mkdir()
        (cwd / "configs").symlink_to(ROOT / "configs")
        scopes[doc, first] = _scope_runs(doc, first, cwd)
    jobs = [{"cwd": str(r[0].cwd), "argvs": [run.argv for run in r]} for r in scopes.values()]
    proc = subprocess.run(
        [sys.executable, __file__], input=json.dumps(jobs), cwd=ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return {
        key: [
            dataclasses.replace(run, code=code, stdout=out, stderr=err)
            for run, (code, out, err) in zip(runs, outcome, strict=False)
        ]
        for (key, runs), outcome in zip(scopes.items(), results, strict=True)
    }


@pytest.mark.parametrize("doc, first, names", RUN_SCOPES, ids=[s[0] for s in RUN_SCOPES])
def test_fast_doc_commands_run_and_write_what_they_claim(doc, first, names, doc_runs):
    runs = doc_runs[doc, first]
    assert tuple(run.argv[0] for run in runs) == names
    for run in runs:  # in order: the first that failed stops the scope
        where = f"{run.command.doc}:{run.command.line}: uhn-jax {shlex.join(run.argv)}"
        assert run.code == 0, f"{where}: exit {run.code}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, f"{where}\n{run.stderr[-3000:]}"
        _assert_wrote(run, where)


def _assert_wrote(run: Run, where: str) -> None:
    """What the command says it writes: train a finished run (``results.json``), compare one
    run per mode and seed and a table, export a checkpoint of the base model's params, plot
    PNGs in ``W/plots`` (or ``--out``), summarize a row per compare run."""
    workdir = run.cwd / _value(run.argv, "--workdir")
    name = run.argv[0]
    if name == "train":
        results = json.loads((workdir / "results.json").read_text())
        assert results["steps"] == 4, where
        assert f"test {results['metric_name']} " in run.stdout, where
    elif name == "compare":
        rows = json.loads((workdir / "compare.json").read_text())
        assert {r["mode"] for r in rows} == {"direct", "uhn"} and len(rows) == 2, (where, rows)
        for r in rows:
            assert (workdir / f"{r['mode']}_seed{r['seed']}" / "results.json").is_file(), where
        assert (workdir / "compare.md").read_text().strip() in run.stdout, where
    elif name == "export":
        import jax
        import numpy as np

        from uhn_jax.training import checkpoint

        out = run.cwd / (_value(run.argv, "--out") or workdir / "export")
        params = checkpoint.load_params(out)
        size = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
        assert size == json.loads((workdir / "results.json").read_text())["num_target_params"]
        assert str(out) in run.stdout, where
    elif name == "plot":
        out = run.cwd / (_value(run.argv, "--out") or workdir / "plots")
        paths = [run.cwd / line for line in run.stdout.split()]
        assert set(PLOTS) <= {p.name for p in paths}, where
        for path in paths:
            assert path.parent == out and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", where
    elif name == "summarize":
        runs = sorted(p.parent for p in workdir.glob("*/compare.json"))
        assert runs, where
        for sub in runs:
            assert re.search(rf"^\| {sub.name} \|", run.stdout, re.M), (where, run.stdout)
    else:
        raise AssertionError(f"{where}: no check of what {name} writes")


def _run_jobs(jobs: list[dict]) -> list[list[tuple[int, str, str]]]:
    """The runner: each job's commands in its directory, one forked process each, until one
    fails; per command its exit code, stdout and stderr."""
    preload_cli()  # once, before any fork
    results = []
    for job in jobs:
        os.chdir(job["cwd"])
        outcome = []
        for i, argv in enumerate(job["argvs"]):
            out, err = Path(f"cmd{i}.out").absolute(), Path(f"cmd{i}.err").absolute()
            _, status = os.waitpid(fork_cli(argv, out, err), 0)
            code = os.waitstatus_to_exitcode(status)
            outcome.append((code, out.read_text(), err.read_text()))
            if code != 0:
                break
        results.append(outcome)
    return results


if __name__ == "__main__":
    print(json.dumps(_run_jobs(json.loads(sys.stdin.read()))))
