"""Text classification data: tokenizer, vocabulary, AG News, IMDB and MR sentence polarity."""

import collections
import csv
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from uhn_jax.data import files

# Special tokens and their ids, in the reference order: `<unk>`=0, `<pad>`=1, `<cls>`=2. The
# Transformer's key padding mask is `tokens == PAD_ID`.
UNK, PAD, CLS = "<unk>", "<pad>", "<cls>"
SPECIALS = (UNK, PAD, CLS)
UNK_ID, PAD_ID, CLS_ID = 0, 1, 2
# Vocabulary size including the 3 specials: the 4,997 most frequent training tokens.
VOCAB_SIZE = 5000
# Reference tokenizer: words with one inner apostrophe ("don't"), words, single punctuation marks.
TOKEN_PATTERN = re.compile(r"\w+'\w+|\w+|[^\w\s]")

TEXT_DATASETS = ("ag_news", "imdb", "mr")
# Longest encoded sequence per dataset, `<cls>` included (Lmax): AG News 128 and IMDB 512 as in
# the reference; MR is not in the reference, and 64 keeps every one of its sentences whole
# (the longest has 61 tokens).
MAX_LEN = {"ag_news": 128, "imdb": 512, "mr": 64}

AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
AG_NEWS_SPLITS = ("auto", "official", "test_only")
# Fixed split of test.csv for offline runs: per class, 20% held out, chosen with this seed.
AG_NEWS_TEST_ONLY_FRACTION = 0.2
AG_NEWS_TEST_ONLY_SEED = 0
IMDB_CLASSES = ("neg", "pos")
MR_CLASSES = ("neg", "pos")
# Fixed split of MR, which has no official one: per class, 10% held out, chosen with this seed.
MR_TEST_FRACTION = 0.1
MR_SPLIT_SEED = 0

_AG_NEWS_ADVICE = (
    "AG News is `train.csv` and `test.csv` (columns: class index 1-4, title, description), e.g. "
    "from the Kaggle dataset amananandrai/ag-news-classification-dataset or the ag_news_csv "
    "archive of Zhang et al. (2015); put them in data_dir or data_dir/ag_news. With only "
    "test.csv, pass split='test_only'."
)
_IMDB_ADVICE = (
    "IMDB is the Stanford Large Movie Review Dataset: extract aclImdb_v1.tar.gz from "
    "https://ai.stanford.edu/~amaas/data/sentiment/ and pass the aclImdb directory (or its "
    "parent) as data_dir; it must hold {train,test}/{pos,neg}/*.txt."
)
_MR_ADVICE = (
    "MR is the sentence polarity dataset v1.0 of Pang & Lee (2005), files `rt-polarity.pos` and "
    "`rt-polarity.neg` (one sentence a line), from "
    "https://www.cs.cornell.edu/people/pabo/movie-review-data/ (rt-polaritydata.tar.gz); put "
    "them in data_dir or data_dir/rt_polarity."
)


@dataclasses.dataclass(frozen=True, eq=False)
class TextData:
    """A tokenised text classification dataset, split into train and test, as numpy arrays.

    Each row of ``x_train``/``x_test`` is ``<cls>`` followed by at most ``max_len - 1`` token
    ids of the text, then ``<pad>`` up to ``max_len``. ``len_*`` holds the number of
    non-padding positions, ``<cls>`` included, so ``x[:, :len.max()]`` trims a batch to its
    longest row (the reference pads batches dynamically) and ``x == PAD_ID`` is the key
    padding mask.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare arrays directly.

    Attributes:
        name: Dataset name, e.g. ``"ag_news"``.
        x_train: Token ids, int32, shape ``(n_train, max_len)``.
        len_train: Lengths, int32, shape ``(n_train,)``, in ``[1, max_len]``.
        y_train: Labels, int32, shape ``(n_train,)``, in ``[0, num_classes)``.
        x_test: Token ids, int32, shape ``(n_test, max_len)``.
        len_test: Lengths, int32, shape ``(n_test,)``.
        y_test: Labels, int32, shape ``(n_test,)``.
        num_classes: Number of classes.
        vocab: Token of each id; starts with ``SPECIALS`` and is built from the training texts
            only (or given: another dataset's, to feed a model trained on that one). It has at
            most the requested size (fewer if the texts hold fewer distinct tokens).
        class_names: Name of each class, ``num_classes`` of them.
        split: How train and test were chosen, e.g. ``"official"`` or ``"test_only"``.
    """

    name: str
    x_train: np.ndarray
    len_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    len_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    vocab: tuple[str, ...]
    class_names: tuple[str, ...]
    split: str

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
            )
        if tuple(self.vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(
                f"{self.name}: vocab must start with {SPECIALS}, got {tuple(self.vocab[:3])}"
            )
        if len(set(self.vocab)) != len(self.vocab):
            raise ValueError(f"{self.name}: vocab holds repeated tokens")
        if self.x_train.ndim != 2 or self.x_test.ndim != 2:
            raise ValueError(
                f"{self.name}: token ids must be 2-D, got x_train {self.x_train.shape} and "
                f"x_test {self.x_test.shape}"
            )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(
                f"{self.name}: x_train has {self.x_train.shape[1]} positions but x_test has "
                f"{self.x_test.shape[1]}"
            )
        for part in ("train", "test"):
            x, lengths, y = (getattr(self, f"{field}_{part}") for field in ("x", "len", "y"))
            n, t = x.shape
            if x.dtype != np.int32:
                raise ValueError(f"{self.name}: x_{part} must be int32, got {x.dtype}")
            for field, array in (("len", lengths), ("y", y)):
                if array.dtype != np.int32 or array.shape != (n,):
                    raise ValueError(
                        f"{self.name}: {field}_{part} must be int32 of shape ({n},), got "
                        f"{array.dtype} {array.shape}"
                    )
            if not n:
                continue
            if x.min() < 0 or x.max() >= len(self.vocab):
                raise ValueError(f"{self.name}: x_{part} holds ids outside [0, {len(self.vocab)})")
            if y.min() < 0 or y.max() >= self.num_classes:
                raise ValueError(
                    f"{self.name}: y_{part} spans [{y.min()}, {y.max()}], outside "
                    f"[0, {self.num_classes})"
                )
            if lengths.min() < 1 or lengths.max() > t:
                raise ValueError(f"{self.name}: len_{part} must lie in [1, {t}]")
            if (x[:, 0] != CLS_ID).any():
                raise ValueError(f"{self.name}: every row of x_{part} must start with <cls>")
            if not np.array_equal(x == PAD_ID, np.arange(t) >= lengths[:, None]):
                raise ValueError(
                    f"{self.name}: x_{part} must hold <pad> exactly after each row's length"
                )

    @property
    def max_len(self) -> int:
        """Sequence length T of the token arrays, ``<cls>`` included."""
        return self.x_train.shape[1]

    @property
    def vocab_size(self) -> int:
        """Number of tokens in ``vocab``; every id is below it."""
        return len(self.vocab)


def tokenize(text: str) -> list[str]:
    """Splits lower-cased text into words, words with an inner apostrophe and punctuation marks.

    This is the reference tokenizer, regex ``\\w+'\\w+|\\w+|[^\\w\\s]`` on ``text.lower()``;
    ``\\w`` is Unicode-aware, so accented letters stay inside words.

    Args:
        text: Any text.

    Returns:
        The tokens, in order. Whitespace is dropped.
    """
    return TOKEN_PATTERN.findall(text.lower())


def build_vocab(texts: Iterable[str], size: int = VOCAB_SIZE) -> tuple[str, ...]:
    """The ``size - 3`` most frequent tokens of ``texts`` after the specials.

    Ties in frequency are broken by the token's string order, so the vocabulary depends only
    on the multiset of tokens, not on the order of the texts.

    Args:
        texts: Training texts only; building it from test texts leaks them.
        size: Vocabulary size including the 3 specials; at least 4.

    Returns:
        ``(UNK, PAD, CLS, most frequent token, ...)``, at most ``size`` tokens.
    """
    if size < len(SPECIALS) + 1:
        raise ValueError(f"vocab size must be >= {len(SPECIALS) + 1}, got {size}")
    counts = collections.Counter()
    for text in texts:
        counts.update(tokenize(text))
    for special in SPECIALS:  # the tokenizer cannot produce them; guard anyway
        counts.pop(special, None)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return SPECIALS + tuple(token for token, _ in ranked[: size - len(SPECIALS)])


def encode(
    texts: Sequence[str], vocab: Sequence[str], max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises texts, maps tokens to ids, prepends ``<cls>``, truncates and pads.

    Tokens missing from ``vocab`` become ``<unk>``. A text keeps its first ``max_len - 1``
    tokens.

    Args:
        texts: N texts.
        vocab: Token of each id, as returned by ``build_vocab``.
        max_len: Sequence length T, ``<cls>`` included; at least 2.

    Returns:
        ``(ids, lengths)``: int32 ``(N, T)`` token ids, ``<pad>`` after each text, and int32
        ``(N,)`` lengths, ``<cls>`` included.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (<cls> and one token), got {max_len}")
    index = {token: i for i, token in enumerate(vocab)}
    if index.get(UNK) != UNK_ID or index.get(PAD) != PAD_ID or index.get(CLS) != CLS_ID:
        raise ValueError(f"vocab must start with {SPECIALS}")
    ids = np.full((len(texts), max_len), PAD_ID, dtype=np.int32)
    lengths = np.empty(len(texts), dtype=np.int32)
    for row, text in enumerate(texts):
        tokens = tokenize(text)[: max_len - 1]
        ids[row, 0] = CLS_ID
        ids[row, 1 : len(tokens) + 1] = [index.get(token, UNK_ID) for token in tokens]
        lengths[row] = len(tokens) + 1
    return ids, lengths


def padding_mask(ids: np.ndarray) -> np.ndarray:
    """True at padding positions, the Transformer's key padding mask (``ids == PAD_ID``)."""
    return np.asarray(ids) == PAD_ID


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Splits row indices into train and test, holding out the same fraction of each class.

    Class by class, in increasing label order, one ``np.random.default_rng(seed)`` permutes the
    class's rows and the first ``round(test_fraction * n_class)`` go to test. The result is a
    pure function of the labels, the fraction and the seed.

    Args:
        labels: Integer labels, shape ``(N,)``.
        test_fraction: Fraction of each class held out, in ``(0, 1)``.
        seed: Seed of the permutations.

    Returns:
        ``(train_idx, test_idx)``, each sorted, together a partition of ``range(N)``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(test_fraction * len(rows)))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_text_data(
    name: str,
    train: tuple[Sequence[str], np.ndarray],
    test: tuple[Sequence[str], np.ndarray],
    class_names: Sequence[str],
    max_len: int,
    vocab_size: int = VOCAB_SIZE,
    split: str = "official",
    vocab: Sequence[str] | None = None,
) -> TextData:
    """Builds the vocabulary from the training texts (unless ``vocab`` is given) and encodes
    both splits.

    Args:
        name: Dataset name.
        train: ``(texts, labels)`` of the training split; labels in ``[0, len(class_names))``.
        test: ``(texts, labels)`` of the test split.
        class_names: Name of each class.
        max_len: Sequence length, ``<cls>`` included.
        vocab_size: Vocabulary size including the specials.
        split: Description of the split, stored in the result.
        vocab: The vocabulary to encode with instead (e.g. another dataset's, see
            ``load(..., vocab=...)``); ``vocab_size`` is then unused.

    Returns:
        The encoded dataset.
    """
    vocab = build_vocab(train[0], vocab_size) if vocab is None else tuple(vocab)
    x_train, len_train = encode(train[0], vocab, max_len)
    x_test, len_test = encode(test[0], vocab, max_len)
    return TextData(
        name=name,
        x_train=x_train,
        len_train=len_train,
        y_train=np.asarray(train[1], dtype=np.int32),
        x_test=x_test,
        len_test=len_test,
        y_test=np.asarray(test[1], dtype=np.int32),
        num_classes=len(class_names),
        vocab=vocab,
        class_names=tuple(class_names),
        split=split,
    )


# --- AG News ----------------------------------------------------------------------------------


def read_ag_news_csv(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Reads an AG News CSV: one ``"label","title","description"`` row per article.

    Labels 1..4 become 0..3. The text is ``title + " " + description``; each run of
    backslashes, which the files use in place of line breaks, becomes one space. HTML entity
    remnants such as ``#36;`` are left as they are, as in the reference. A first row whose label
    is not a number is taken for a header (the Kaggle copy has one) and skipped; blank lines are
    skipped.

    Args:
        path: The CSV file, UTF-8.

    Returns:
        ``(texts, labels)``, labels int32.

    Raises:
        ValueError: If a row has other than 3 columns or a label outside 1..4, naming the line.
    """
    path = Path(path)
    texts, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        start = 1  # physical line where the next record begins
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(
                    f"{path}, line {line}: expected 3 columns (label, title, description), "
                    f"got {len(row)}"
                )
            label_text = row[0].strip()
            if not label_text.lstrip("+-").isdigit():
                if line == 1 and not texts:
                    continue  # header row
                raise ValueError(f"{path}, line {line}: label {row[0]!r} is not an integer")
            label = int(label_text)
            if not 1 <= label <= len(AG_NEWS_CLASSES):
                raise ValueError(
                    f"{path}, line {line}: label {label} outside 1..{len(AG_NEWS_CLASSES)}"
                )
            texts.append(re.sub(r"\\+", " ", f"{row[1]} {row[2]}"))
            labels.append(label - 1)
    return texts, np.array(labels, dtype=np.int32)


def load_ag_news(
    data_dir: str | os.PathLike[str],
    split: str = "auto",
    max_len: int = MAX_LEN["ag_news"],
    vocab_size: int = VOCAB_SIZE,
    vocab: Sequence[str] | None = None,
) -> TextData:
    """Loads AG News (4 classes: World, Sports, Business, Sci/Tech).

    Splits:

    - ``"official"``: train on ``train.csv`` (120,000 rows), test on ``test.csv`` (7,600).
    - ``"test_only"``: for offline runs with only ``test.csv``. A fixed stratified split of its
      7,600 rows: per class, ``AG_NEWS_TEST_ONLY_FRACTION`` (20%, 380 of 1,900) held out for
      test, chosen by ``stratified_split`` with seed ``AG_NEWS_TEST_ONLY_SEED`` (0), so 6,080
      train and 1,520 test rows. Not comparable with published AG News numbers.
    - ``"auto"``: ``"official"`` if ``train.csv`` exists, else ``"test_only"``.

    The vocabulary comes from the training rows only.

    Args:
        data_dir: Directory holding the CSVs, or its parent holding ``ag_news/``.
        split: One of ``AG_NEWS_SPLITS``.
        max_len: Sequence length, ``<cls>`` included.
        vocab_size: Vocabulary size including the specials.
        vocab: Encode with this vocabulary instead of one built from the training rows.

    Returns:
        The dataset, named ``"ag_news"``; ``split`` says which split was used.

    Raises:
        ValueError: If ``split`` is unknown or a CSV is malformed.
        MissingDataError: If a needed CSV is missing.
    """
    if split not in AG_NEWS_SPLITS:
        raise ValueError(f"Unknown AG News split {split!r}; choose one of {AG_NEWS_SPLITS}")
    directory = _find_dir(data_dir, "ag_news", ("train.csv", "test.csv"), _AG_NEWS_ADVICE)
    test_path = _require(directory, "test.csv", _AG_NEWS_ADVICE)
    if split == "auto":
        split = "official" if (directory / "train.csv").is_file() else "test_only"
    if split == "official":
        train_path = _require(directory, "train.csv", _AG_NEWS_ADVICE)
        train, test = read_ag_news_csv(train_path), read_ag_news_csv(test_path)
    else:
        texts, labels = read_ag_news_csv(test_path)
        train_idx, test_idx = stratified_split(
            labels, AG_NEWS_TEST_ONLY_FRACTION, AG_NEWS_TEST_ONLY_SEED
        )
        train = ([texts[i] for i in train_idx], labels[train_idx])
        test = ([texts[i] for i in test_idx], labels[test_idx])
    return make_text_data(
        "ag_news", train, test, AG_NEWS_CLASSES, max_len, vocab_size, split, vocab
    )


# --- IMDB -------------------------------------------------------------------------------------

_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


def load_imdb(
    data_dir: str | os.PathLike[str],
    max_len: int = MAX_LEN["imdb"],
    vocab_size: int = VOCAB_SIZE,
    vocab: Sequence[str] | None = None,
) -> TextData:
    """Loads the IMDB movie reviews (Maas et al. 2011), 25,000 train and 25,000 test.

    Reads ``{train,test}/{neg,pos}/*.txt`` (UTF-8; ``unsup`` is ignored) in file-name order,
    negatives first; label 0 is ``neg``, 1 is ``pos``. ``<br />`` tags become spaces.

    Args:
        data_dir: The ``aclImdb`` directory, or a directory holding ``aclImdb/`` or ``imdb/``.
        max_len: Sequence length, ``<cls>`` included.
        vocab_size: Vocabulary size including the specials.
        vocab: Encode with this vocabulary instead of one built from the training reviews.

    Returns:
        The dataset, named ``"imdb"``.

    Raises:
        MissingDataError: If a split/class directory is missing or holds no ``.txt`` file.
    """
    directory = _find_dir(data_dir, ("aclImdb", "imdb"), ("train", "test"), _IMDB_ADVICE)
    splits = {}
    for part in ("train", "test"):
        texts, labels = [], []
        for label, cls in enumerate(IMDB_CLASSES):
            folder = directory / part / cls
            reviews = sorted(folder.glob("*.txt")) if folder.is_dir() else []
            if not reviews:
                raise files.MissingDataError(
                    f"Missing data files `{part}/{cls}/*.txt`: no .txt file in "
                    f"{files.describe_dir(folder)}. {_IMDB_ADVICE}"
                )
            texts += [_BR_TAG.sub(" ", file.read_text(encoding="utf-8")) for file in reviews]
            labels += [label] * len(reviews)
        splits[part] = (texts, np.array(labels, dtype=np.int32))
    return make_text_data(
        "imdb", splits["train"], splits["test"], IMDB_CLASSES, max_len, vocab_size, vocab=vocab
    )


# --- MR sentence polarity ---------------------------------------------------------------------


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    """Non-blank lines of a text file, UTF-8 if it decodes as such, else latin-1.

    The original Cornell release of MR is latin-1 (Windows-1252 in places); some copies are
    re-encoded as UTF-8. latin-1 decodes any bytes, so it is the fallback.
    """
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_mr(
    data_dir: str | os.PathLike[str],
    max_len: int = MAX_LEN["mr"],
    vocab_size: int = VOCAB_SIZE,
    vocab: Sequence[str] | None = None,
) -> TextData:
    """Loads MR, the sentence polarity dataset v1.0 (Pang & Lee 2005): 5,331 + 5,331 sentences.

    A small, real stand-in for IMDB. It has no official split, so this is a fixed stratified
    one: per class, ``MR_TEST_FRACTION`` (10%, 533 of 5,331) held out for test, chosen by
    ``stratified_split`` with seed ``MR_SPLIT_SEED`` (0) over the rows ordered negatives then
    positives, each in file order: 9,596 train and 1,066 test sentences. Label 0 is ``neg``,
    1 is ``pos``. The vocabulary comes from the training sentences only.

    Args:
        data_dir: Directory holding ``rt-polarity.{pos,neg}``, or its parent holding
            ``rt_polarity/``.
        max_len: Sequence length, ``<cls>`` included.
        vocab_size: Vocabulary size including the specials.
        vocab: Encode with this vocabulary instead of one built from the training sentences.

    Returns:
        The dataset, named ``"mr"``.

    Raises:
        MissingDataError: If a file is missing.
    """
    directory = _find_dir(
        data_dir, "rt_polarity", ("rt-polarity.pos", "rt-polarity.neg"), _MR_ADVICE
    )
    texts, labels = [], []
    for label, cls in enumerate(MR_CLASSES):
        lines = read_lines(_require(directory, f"rt-polarity.{cls}", _MR_ADVICE))
        texts += lines
        labels += [label] * len(lines)
    labels = np.array(labels, dtype=np.int32)
    train_idx, test_idx = stratified_split(labels, MR_TEST_FRACTION, MR_SPLIT_SEED)
    train = ([texts[i] for i in train_idx], labels[train_idx])
    test = ([texts[i] for i in test_idx], labels[test_idx])
    split = "stratified_90_10"
    return make_text_data("mr", train, test, MR_CLASSES, max_len, vocab_size, split, vocab)


_LOADERS = {"ag_news": load_ag_news, "imdb": load_imdb, "mr": load_mr}


def load(name: str, data_dir: str | os.PathLike[str], **kwargs: Any) -> TextData:
    """Loads a text dataset by name.

    Args:
        name: One of ``TEXT_DATASETS``.
        data_dir: Directory searched by the dataset's loader.
        **kwargs: Passed on to the loader, e.g. ``split="test_only"``, ``max_len=64`` or
            ``vocab=load("ag_news", data_dir).vocab`` (encode with another dataset's
            vocabulary, as ``data.vocab_from`` does).

    Returns:
        The dataset.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    if name not in _LOADERS:
        raise ValueError(f"Unknown text dataset {name!r}; choose one of {TEXT_DATASETS}")
    return _LOADERS[name](data_dir, **kwargs)


def _find_dir(
    data_dir: str | os.PathLike[str],
    subdirs: str | tuple[str, ...],
    names: tuple[str, ...],
    advice: str,
) -> Path:
    """``data_dir`` or the first ``data_dir/<subdir>`` holding any of ``names``."""
    data_dir = Path(data_dir)
    subdirs = (subdirs,) if isinstance(subdirs, str) else subdirs
    candidates = (data_dir, *(data_dir / sub for sub in subdirs))
    for directory in candidates:
        if any((directory / name).exists() for name in names):
            return directory
    where = ", ".join(files.describe_dir(d) for d in candidates)
    raise files.MissingDataError(
        f"Missing data file `{names[-1]}` (none of {', '.join(names)} found): looked in "
        f"{where}. {advice}"
    )


def _require(directory: Path, name: str, advice: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise files.MissingDataError(
            f"Missing data file `{name}` in {files.describe_dir(directory)}. {advice}"
        )
    return path
