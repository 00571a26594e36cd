"""Character-level text from the MR sentence-polarity corpus, for character language models.

The corpus is ``rt-polarity.pos`` and ``rt-polarity.neg`` (Pang & Lee 2005; 5,331 sentences
each, one a line). Fixed split: the lines are interleaved pos[0], neg[0], pos[1], neg[1], ...
(any surplus of the longer file follows), each line ends with ``"\\n"``, and the last
``TEST_FRACTION`` (10 %) of the interleaved lines is the test split: 9,596 train lines
(~1.1 M characters) and 1,066 test lines. Interleaving keeps both polarities in both splits.

The vocabulary is every character seen at least ``min_count`` times in the *training* text,
sorted by code point, after ``UNK`` (id 0), to which all other characters map. Batches are
stateless: :func:`train_batch` draws the windows of step ``step`` from ``(seed, step)`` alone,
so a resumed run sees the same data; :func:`eval_batches` covers the test split exactly once.
"""

import collections
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from uhn_jax.data import files, text

UNK = "<unk>"
UNK_ID = 0
TEST_FRACTION = 0.1
# Characters seen fewer times in the training text become UNK (accented letters, rare symbols).
MIN_COUNT = 10
MR_FILES = ("rt-polarity.pos", "rt-polarity.neg")
_ADVICE = (
    "MR is the sentence polarity dataset v1.0 of Pang & Lee (2005), files `rt-polarity.pos` and "
    "`rt-polarity.neg` (one sentence a line), in rt-polaritydata.tar.gz from "
    "https://www.cs.cornell.edu/people/pabo/movie-review-data/; put them in data_dir or "
    "data_dir/rt_polarity."
)


@dataclasses.dataclass(frozen=True, eq=False)
class CharData:
    """A character-level corpus as int32 token ids.

    Attributes:
        vocab: The characters, ``vocab[UNK_ID] == UNK``; token id = index.
        train: Training token ids, int32, shape ``(n_train,)``.
        test: Test token ids, int32, shape ``(n_test,)``.
    """

    vocab: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (UNK shows as ``<unk>``)."""
        return "".join(self.vocab[i] for i in ids)


def interleave_split(
    pos: Sequence[str], neg: Sequence[str], test_fraction: float = TEST_FRACTION
) -> tuple[list[str], list[str]]:
    """Train and test lines: pos and neg interleaved, the last ``test_fraction`` for test.

    Args:
        pos: Positive sentences, in file order.
        neg: Negative sentences, in file order.
        test_fraction: Share of the lines held out, in ``(0, 1)``.

    Returns:
        ``(train_lines, test_lines)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = min(len(pos), len(neg))
    lines = [line for pair in zip(pos, neg, strict=False) for line in pair]
    lines += list(pos[n:]) + list(neg[n:])
    n_test = round(test_fraction * len(lines))
    return lines[: len(lines) - n_test], lines[len(lines) - n_test :]


def build_vocab(chars: str, min_count: int = MIN_COUNT) -> tuple[str, ...]:
    """``UNK`` followed by the characters seen at least ``min_count`` times, by code point."""
    counts = collections.Counter(chars)
    return (UNK, *sorted(ch for ch, n in counts.items() if n >= min_count))


def encode(chars: str, vocab: Sequence[str]) -> np.ndarray:
    """int32 ids of ``chars``; characters outside ``vocab`` become ``UNK_ID``."""
    index = {ch: i for i, ch in enumerate(vocab)}
    return np.fromiter((index.get(ch, UNK_ID) for ch in chars), np.int32, len(chars))


def _read_mr(directory: Path) -> tuple[list[str], list[str]]:
    missing = [name for name in MR_FILES if not (directory / name).is_file()]
    if missing:
        raise files.MissingDataError(
            f"Missing data file(s) {', '.join(f'`{m}`' for m in missing)} in "
            f"{files.describe_dir(directory)}. {_ADVICE}"
        )
    # text.read_lines decodes UTF-8 when it can, else latin-1 (the original release).
    pos, neg = (text.read_lines(directory / name) for name in MR_FILES)
    return pos, neg


def load_mr_chars(data_dir: str | os.PathLike[str], min_count: int = MIN_COUNT) -> CharData:
    """Loads MR as character ids with the fixed split of the module docstring.

    Args:
        data_dir: Directory holding ``rt-polarity.{pos,neg}``, or its parent holding
            ``rt_polarity/``.
        min_count: Training-text count below which a character becomes ``UNK``.

    Returns:
        The corpus.

    Raises:
        ValueError: If ``data_dir`` is empty.
        MissingDataError: If a file is missing; the message names both files.
    """
    pos, neg = files.load_from_dir("rt_polarity", data_dir, _read_mr, _ADVICE)
    train_lines, test_lines = interleave_split(pos, neg)
    train_text = "".join(line + "\n" for line in train_lines)
    test_text = "".join(line + "\n" for line in test_lines)
    vocab = build_vocab(train_text, min_count)
    return CharData(vocab, encode(train_text, vocab), encode(test_text, vocab))


def train_batch(ids: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int) -> np.ndarray:
    """The training windows of step ``step``: a function of ``(seed, step)`` only.

    Each row is ``seq_len + 1`` consecutive ids from a uniformly drawn start; the model reads
    ``row[:-1]`` and predicts ``row[1:]``.

    Args:
        ids: Token ids, shape ``(n,)`` with ``n > seq_len``.
        seed: Run seed.
        step: Training step.
        batch_size: Rows.
        seq_len: Predicted positions per row.

    Returns:
        int32 array ``[batch_size, seq_len + 1]``.
    """
    if len(ids) <= seq_len:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len} ids, got {len(ids)}")
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(ids) - seq_len, size=batch_size)
    return np.asarray(ids)[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)


def eval_windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """All of ``ids`` as windows of ``seq_len + 1`` ids overlapping by one, and a target mask.

    Window ``k`` holds ``ids[k L : k L + L + 1]``; the last one is padded with ``UNK_ID`` and its
    padded targets masked, so every id but the first is a target exactly once.

    Args:
        ids: Token ids, shape ``(n,)`` with ``n >= 2``.
        seq_len: Predicted positions ``L`` per window.

    Returns:
        ``(windows [w, L + 1] int32, mask [w, L] float32)``.
    """
    n_targets = len(ids) - 1
    n_windows = -(-n_targets // seq_len)
    padded = np.full(n_windows * seq_len + 1, UNK_ID, np.int32)
    padded[: len(ids)] = ids
    windows = padded[np.arange(n_windows)[:, None] * seq_len + np.arange(seq_len + 1)]
    mask = (np.arange(n_windows * seq_len) < n_targets).reshape(n_windows, seq_len)
    return windows, mask.astype(np.float32)


def eval_batches(
    ids: np.ndarray, seq_len: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`eval_windows` in batches of exactly ``batch_size`` rows (fixed shapes for jit).

    The last batch is filled with all-masked rows, so the masked mean over all batches is the
    mean over the whole split.

    Yields:
        ``(windows [batch_size, seq_len + 1], mask [batch_size, seq_len])``.
    """
    windows, mask = eval_windows(ids, seq_len)
    for start in range(0, len(windows), batch_size):
        w, m = windows[start : start + batch_size], mask[start : start + batch_size]
        pad = batch_size - len(w)
        yield np.pad(w, ((0, pad), (0, 0))), np.pad(m, ((0, pad), (0, 0)))


#: Characters a training or test window predicts, when ``data.max_len`` is 0.
DEFAULT_SEQ_LEN = 100


@dataclasses.dataclass(frozen=True)
class CharWindows:
    """A character corpus cut into windows for the training loop's sampled batches.

    ``x[k]`` is ``L`` consecutive ids and ``y[k]`` the same window shifted by one (the ids
    ``x[k]`` predicts). Training windows do not overlap and batches sample them per epoch; the
    test split is cut the same way, leaving out its last partial window (under ``L`` ids).
    """

    name: str
    x_train: np.ndarray  # [n, L] int32
    y_train: np.ndarray  # [n, L] int32
    x_test: np.ndarray
    y_test: np.ndarray
    vocab: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.vocab)


def _cut(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    n = (len(ids) - 1) // seq_len
    if n < 1:
        raise ValueError(f"seq_len={seq_len} needs more than {seq_len} ids, got {len(ids)}")
    starts = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
    w = np.asarray(ids, np.int32)[starts]
    return w[:, :-1], w[:, 1:]


def lm_windows(data: CharData, seq_len: int = DEFAULT_SEQ_LEN, name: str = "mr_chars"):
    """``data`` as :class:`CharWindows` of ``seq_len`` predicted characters."""
    x_train, y_train = _cut(data.train, seq_len)
    x_test, y_test = _cut(data.test, seq_len)
    return CharWindows(name, x_train, y_train, x_test, y_test, data.vocab)
