"""Continual-learning benchmarks built from an image classification dataset.

* ``split``: task ``t`` holds the examples of classes ``2t`` and ``2t + 1``, relabelled 0 and 1
  (Split-MNIST: 5 tasks of 2 classes). Every task has a 2-way output.
* ``permuted``: task ``t`` is the whole dataset with a fixed permutation of the pixels (of the
  flattened example); task 0 is the identity, task ``t >= 1`` draws its permutation from
  ``permutation_seeds[t - 1]`` (Permuted-MNIST). Every task keeps all the classes.

Every task's training split is cut to the same length (the smallest task's, in the base
dataset's order), so one compiled training step serves every task; the test splits are kept
whole. A :class:`TaskSequence` builds each task's :class:`~uhn_jax.data.images.ArrayDataset` on
demand, so a long permuted sequence does not hold every permuted copy in memory.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from uhn_jax.data import images

BENCHMARKS = ("split", "permuted")


def split_classes(task: int) -> tuple[int, int]:
    """The two original classes of Split task ``task``: ``(2 task, 2 task + 1)``."""
    return 2 * task, 2 * task + 1


def default_permutation_seeds(num_tasks: int) -> tuple[int, ...]:
    """The seeds of tasks ``1 .. num_tasks - 1`` when none are given: ``1, 2, ...``."""
    return tuple(range(1, num_tasks))


def check_seeds(num_tasks: int, seeds: Sequence[int] = ()) -> tuple[int, ...]:
    """The permutation seeds of tasks ``1 .. num_tasks - 1`` (``()``:
    :func:`default_permutation_seeds`), checked without any data.

    Raises:
      ValueError: naming ``continual.permutation_seeds`` unless there is one int >= 0 per task
        after the first and no seed repeats (two tasks with one seed would be one task).
    """
    seeds = tuple(seeds) or default_permutation_seeds(num_tasks)
    field = "continual.permutation_seeds"
    if len(seeds) != num_tasks - 1:
        raise ValueError(
            f"{field} needs one seed per task after the first (task 0 is the identity): "
            f"{num_tasks - 1} for continual.num_tasks={num_tasks}, got {len(seeds)}: {seeds}"
        )
    if any(not isinstance(s, int | np.integer) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"{field} must be ints >= 0, got {seeds}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        tasks = [t + 1 for t, s in enumerate(seeds) if s == repeated[0]]
        raise ValueError(
            f"{field} repeats seed {repeated[0]}: tasks {tasks} would be the same task; give "
            f"every task its own seed, got {seeds}"
        )
    return seeds


def permutations(input_size: int, num_tasks: int, seeds: Sequence[int] = ()) -> np.ndarray:
    """``(num_tasks, input_size)`` pixel permutations: row 0 the identity, row ``t`` drawn from
    ``seeds[t - 1]`` (``()``: :func:`default_permutation_seeds`).

    Raises:
      ValueError: naming ``continual.permutation_seeds`` for seeds :func:`check_seeds`
        refuses, or when two tasks' permutations coincide (possible only for tiny inputs).
    """
    seeds = check_seeds(num_tasks, seeds)
    field = "continual.permutation_seeds"
    rows = [np.arange(input_size)]
    rows += [np.random.default_rng(s).permutation(input_size) for s in seeds]
    perms = np.stack(rows)
    if len(np.unique(perms, axis=0)) != num_tasks:
        raise ValueError(
            f"{field} {seeds} give two tasks the same permutation of the {input_size} inputs "
            "(or the identity of task 0); choose other seeds"
        )
    return perms


@dataclasses.dataclass(frozen=True, eq=False)
class TaskSequence:
    """The tasks of a benchmark over ``base``; ``task(t)`` builds task ``t``'s dataset.

    Attributes:
      base: the image classification dataset the tasks come from.
      benchmark: one of :data:`BENCHMARKS`.
      num_tasks: the number of tasks.
      perms: ``(num_tasks, input_size)`` pixel permutations (``permuted``), else ``None``.
      train_size: the training examples of every task (the smallest task's count).
    """

    base: images.ArrayDataset
    benchmark: str
    num_tasks: int
    perms: np.ndarray | None
    train_size: int
    multi_head: bool = False

    def __len__(self) -> int:
        return self.num_tasks

    @property
    def head_size(self) -> int:
        """Outputs of a task's head: 2 (``split``) or the base dataset's classes."""
        return 2 if self.benchmark == "split" else self.base.num_classes

    @property
    def num_classes(self) -> int:
        """Outputs of the network: one head (:attr:`head_size`), or with :attr:`multi_head`
        one head per task, task ``t``'s labels offset by ``t * head_size``."""
        return self.head_size * (self.num_tasks if self.multi_head else 1)

    def task(self, t: int) -> images.ArrayDataset:
        """Task ``t``'s dataset (training split cut to :attr:`train_size`).

        Raises:
          ValueError: naming ``task`` when it is not in ``[0, num_tasks)``.
        """
        if not isinstance(t, int | np.integer) or not 0 <= t < self.num_tasks:
            raise ValueError(f"task must be in [0, {self.num_tasks}), got {t!r}")
        b = self.base
        if self.benchmark == "split":
            lo, hi = split_classes(int(t))

            def select(x, y):
                keep = np.isin(y, (lo, hi))
                return x[keep], (y[keep] == hi).astype(np.int32)
        else:
            perm = self.perms[t]

            def select(x, y):
                return x.reshape(len(x), -1)[:, perm].reshape(x.shape), y

        (x_train, y_train), (x_test, y_test) = (
            select(b.x_train, b.y_train),
            select(b.x_test, b.y_test),
        )
        n = self.train_size
        offset = int(t) * self.head_size if self.multi_head else 0
        return images.ArrayDataset(
            name=f"{b.name}/{self.benchmark}{t}",
            x_train=x_train[:n],
            y_train=(y_train[:n] + offset).astype(np.int32),
            x_test=x_test,
            y_test=(y_test + offset).astype(np.int32),
            num_classes=self.num_classes,
            mean=b.mean,
            std=b.std,
        )


def make_sequence(
    base,
    benchmark: str,
    num_tasks: int,
    permutation_seeds: Sequence[int] = (),
    *,
    multi_head: bool = False,
) -> TaskSequence:
    """The :class:`TaskSequence` of ``benchmark`` over the classification dataset ``base``;
    ``multi_head``: one output head per task (:attr:`TaskSequence.num_classes`).

    Raises:
      ValueError: naming the field at fault: ``continual.benchmark`` (unknown, or a dataset
        that does not suit it), ``continual.num_tasks`` (more Split tasks than class pairs),
        ``continual.permutation_seeds`` (see :func:`permutations`; must be empty for Split).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"continual.benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if not isinstance(base, images.ArrayDataset):
        raise ValueError(
            f"continual.benchmark {benchmark!r} needs an image classification dataset "
            f"(an ArrayDataset such as digits or mnist), got {type(base).__name__}"
        )
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"continual.num_tasks must be a positive int, got {num_tasks!r}")
    if benchmark == "split":
        if permutation_seeds:
            raise ValueError(
                "continual.permutation_seeds is read by benchmark 'permuted' only; leave it "
                f"empty for 'split', got {tuple(permutation_seeds)}"
            )
        pairs = base.num_classes // 2
        if num_tasks > pairs:
            raise ValueError(
                f"continual.num_tasks must be at most {pairs} for split {base.name} "
                f"({base.num_classes} classes, 2 per task), got {num_tasks}"
            )
        counts = np.bincount(base.y_train, minlength=base.num_classes)
        size = min(int(counts[list(split_classes(t))].sum()) for t in range(num_tasks))
        return TaskSequence(base, benchmark, num_tasks, None, size, multi_head)
    if base.mean is not None:
        raise ValueError(
            f"continual.benchmark 'permuted' permutes the values of each flattened example, "
            f"which would mix the channels {base.name} normalises on device; use a dataset with "
            "float inputs (digits, mnist, fashion_mnist)"
        )
    perms = permutations(math.prod(base.input_shape), num_tasks, permutation_seeds)
    return TaskSequence(base, benchmark, num_tasks, perms, len(base.y_train), multi_head)
