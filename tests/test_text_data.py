"""Tests for uhn_jax.data.text."""

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data_dir

from uhn_jax.data import files, text


def _check_invariants(d: text.TextData) -> None:
    """Properties every TextData must have, checked independently of __post_init__."""
    assert d.vocab[:3] == ("<unk>", "<pad>", "<cls>")
    for x, lengths, y in ((d.x_train, d.len_train, d.y_train), (d.x_test, d.len_test, d.y_test)):
        assert x.dtype == lengths.dtype == y.dtype == np.int32
        assert x.shape == (len(y), d.max_len) and lengths.shape == (len(y),)
        assert (x[:, 0] == 2).all()
        for row, n in zip(x[:50], lengths[:50], strict=True):
            assert (row[n:] == 1).all() and (row[:n] != 1).all()


def _write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL).writerows(rows)


# ----------------------------------------------------------------------------------------------
# Tokenizer, vocabulary, encoding.


@pytest.mark.parametrize(
    "sentence, tokens",
    [
        ("Hello, World!", ["hello", ",", "world", "!"]),
        ("Don't STOP rock'n'roll", ["don't", "stop", "rock'n", "'", "roll"]),
        ("'quoted' words", ["'", "quoted", "'", "words"]),
        ("$10.5 million (AP)", ["$", "10", ".", "5", "million", "(", "ap", ")"]),
        ("snake_case and tabs\tand\nlines", ["snake_case", "and", "tabs", "and", "lines"]),
        ("Café déjà-vu", ["café", "déjà", "-", "vu"]),
        ("  ", []),
    ],
)
def test_tokenize(sentence, tokens):
    assert text.tokenize(sentence) == tokens


def test_build_vocab_order_and_tie_break():
    texts = ["b a c", "a b", "a d", "c"]  # a:3, b:2, c:2, d:1
    vocab = text.build_vocab(texts, size=100)
    assert vocab == ("<unk>", "<pad>", "<cls>", "a", "b", "c", "d")
    # Order of texts does not matter; ties go to the string order.
    assert text.build_vocab(texts[::-1], size=100) == vocab
    assert text.build_vocab(texts, size=5) == ("<unk>", "<pad>", "<cls>", "a", "b")
    assert (text.UNK_ID, text.PAD_ID, text.CLS_ID) == (0, 1, 2)
    with pytest.raises(ValueError, match="vocab size"):
        text.build_vocab(texts, size=3)


def test_build_vocab_default_size():
    texts = [" ".join(f"w{i}" for i in range(k, 6000)) for k in range(3)]
    vocab = text.build_vocab(texts)
    assert len(vocab) == text.VOCAB_SIZE == 5000
    # w0 is rarest (1), w1 next (2); all others tie at 3 and go in string order.
    assert vocab[3:6] == ("w10", "w100", "w1000")
    assert "w0" not in vocab and "w1" not in vocab


def test_encode_unknown_truncation_padding():
    vocab = ("<unk>", "<pad>", "<cls>", "the", "cat", ".")
    ids, lengths = text.encode(["The cat sat.", "", "the the the the the cat"], vocab, 5)
    np.testing.assert_array_equal(
        ids,
        [
            [2, 3, 4, 0, 5],  # "sat" is unknown
            [2, 1, 1, 1, 1],  # empty text: <cls> only
            [2, 3, 3, 3, 3],  # truncated to max_len - 1 tokens
        ],
    )
    np.testing.assert_array_equal(lengths, [5, 1, 5])
    assert ids.dtype == lengths.dtype == np.int32
    np.testing.assert_array_equal(text.padding_mask(ids), np.arange(5) >= lengths[:, None])
    with pytest.raises(ValueError, match="max_len"):
        text.encode(["x"], vocab, 1)
    with pytest.raises(ValueError, match="vocab must start"):
        text.encode(["x"], ("<pad>", "<unk>", "<cls>"), 4)


def test_stratified_split():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    train, test = text.stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(60))
    again = text.stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], test)
    assert not np.array_equal(text.stratified_split(labels, 0.2, seed=4)[1], test)
    with pytest.raises(ValueError, match="test_fraction"):
        text.stratified_split(labels, 1.0, seed=0)


def test_text_data_validation():
    d = text.make_text_data(
        "toy", (["a b", "b"], np.array([0, 1])), (["c"], np.array([1])), ("x", "y"), 4
    )
    _check_invariants(d)
    assert d.vocab == ("<unk>", "<pad>", "<cls>", "b", "a")
    np.testing.assert_array_equal(d.x_test, [[2, 0, 1, 1]])
    fields = {f: getattr(d, f) for f in d.__dataclass_fields__}
    bad = {
        "y_train": np.array([0, 2], np.int32),  # label out of range
        "len_train": np.array([3, 3], np.int32),  # disagrees with the padding
        "x_test": np.array([[2, 0, 1]], np.int32),  # other length than x_train
        "x_train": d.x_train.astype(np.int64),
        "vocab": ("<pad>", "<unk>", "<cls>", "b", "a"),
    }
    for field, value in bad.items():
        with pytest.raises(ValueError, match="toy"):
            text.TextData(**{**fields, field: value})


# ----------------------------------------------------------------------------------------------
# AG News.


def test_ag_news_synthetic_official(tmp_path):
    directory = tmp_path / "ag_news"
    directory.mkdir()
    _write_csv(
        directory / "train.csv",
        [
            ("3", "Stocks rally", 'Markets\\rose on "good" news'),
            ("1", "War", "Troops move"),
            ("2", "Goal!", "Team wins\\\\again"),
            ("4", "Chips", "New CPU"),
        ],
    )
    _write_csv(directory / "test.csv", [("2", "Team", "loses"), ("4", "Quantum", "chips")])
    # The parent directory is given: the loader finds ag_news/ itself.
    d = text.load("ag_news", tmp_path)
    _check_invariants(d)
    assert d.split == "official" and d.num_classes == 4
    assert d.class_names == ("World", "Sports", "Business", "Sci/Tech")
    np.testing.assert_array_equal(d.y_train, [2, 0, 1, 3])
    np.testing.assert_array_equal(d.y_test, [1, 3])
    assert "\\" not in d.vocab  # backslash escapes became spaces
    assert {"markets", "rose", "wins", "again", '"'} <= set(d.vocab)
    assert "quantum" not in d.vocab  # test words never enter the vocabulary
    vocab = {token: i for i, token in enumerate(d.vocab)}
    np.testing.assert_array_equal(
        d.x_test[1, : d.len_test[1]], [2, 0, vocab["chips"]]
    )  # "quantum" -> <unk>
    texts, _ = text.read_ag_news_csv(directory / "train.csv")
    assert texts[0] == 'Stocks rally Markets rose on "good" news'
    assert texts[2] == "Goal! Team wins again"


def test_ag_news_header_and_auto_split(tmp_path):
    rows = [(str(1 + i % 4), f"title {i}", f"text {i}") for i in range(40)]
    _write_csv(tmp_path / "test.csv", [("Class Index", "Title", "Description"), *rows])
    d = text.load_ag_news(tmp_path)  # no train.csv: auto -> test_only
    assert d.split == "test_only"
    assert (len(d.y_train), len(d.y_test)) == (32, 8)
    assert np.bincount(d.y_test).tolist() == [2, 2, 2, 2]
    assert "index" not in d.vocab  # the header row is skipped
    with pytest.raises(files.MissingDataError, match="train.csv"):
        text.load_ag_news(tmp_path, split="official")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("1", "a", "b"), ("2", "a")], r"line 2: expected 3 columns"),
        ([("1", "a", "b"), ("5", "a", "b")], r"line 2: label 5 outside 1\.\.4"),
        ([("1", "a\nb", "c"), ("0", "a", "b")], r"line 3: label 0"),  # quoted newline
        ([("1", "a", "b"), ("x", "a", "b")], r"line 2: label 'x' is not an integer"),
    ],
)
def test_ag_news_malformed(tmp_path, rows, message):
    _write_csv(tmp_path / "test.csv", rows)
    with pytest.raises(ValueError, match=message) as info:
        text.load_ag_news(tmp_path, split="test_only")
    assert str(tmp_path / "test.csv") in str(info.value)


def test_ag_news_real_test_only():
    directory = real_data_dir("ag_news")
    texts, labels = text.read_ag_news_csv(directory / "test.csv")
    assert len(texts) == 7600 and np.bincount(labels).tolist() == [1900] * 4
    assert not any("\\" in row for row in texts)
    d = text.load_ag_news(directory, split="test_only")
    _check_invariants(d)
    assert (d.split, d.max_len, len(d.vocab)) == ("test_only", 128, 5000)
    assert np.bincount(d.y_train).tolist() == [1520] * 4
    assert np.bincount(d.y_test).tolist() == [380] * 4
    # Deterministic: a second load gives the same vocabulary and arrays.
    again = text.load("ag_news", directory)
    assert again.split == "test_only" and again.vocab == d.vocab
    np.testing.assert_array_equal(again.x_train, d.x_train)
    np.testing.assert_array_equal(again.x_test, d.x_test)
    # Held-out rows are the rows of test.csv the split names, encoded with the training vocab.
    _, test_idx = text.stratified_split(labels, 0.2, 0)
    x, _ = text.encode([texts[i] for i in test_idx], d.vocab, 128)
    np.testing.assert_array_equal(x, d.x_test)


# ----------------------------------------------------------------------------------------------
# IMDB.


def _write_imdb(root: Path) -> None:
    reviews = {
        ("train", "pos"): ["Great film.<br /><br />Loved it", "great"],
        ("train", "neg"): ["Awful<br/>film", "bad bad", "dull"],
        ("test", "pos"): ["great fun"],
        ("test", "neg"): ["awful"],
    }
    for (part, cls), texts in reviews.items():
        folder = root / "aclImdb" / part / cls
        folder.mkdir(parents=True)
        for i, review in enumerate(texts):
            (folder / f"{i}_{7 if cls == 'pos' else 2}.txt").write_text(review, encoding="utf-8")
    (root / "aclImdb" / "train" / "unsup").mkdir()
    (root / "aclImdb" / "train" / "unsup" / "0_0.txt").write_text("ignored words")


def test_imdb_synthetic(tmp_path):
    _write_imdb(tmp_path)
    for directory in (tmp_path, tmp_path / "aclImdb"):
        d = text.load("imdb", directory)
        _check_invariants(d)
        assert d.max_len == 512 and d.class_names == ("neg", "pos")
        np.testing.assert_array_equal(d.y_train, [0, 0, 0, 1, 1])
        np.testing.assert_array_equal(d.y_test, [0, 1])
        assert not {"br", "<", "/", ">", "ignored"} & set(d.vocab)
        vocab = {token: i for i, token in enumerate(d.vocab)}
        # First train review: "Awful<br/>film" -> <cls> awful film.
        np.testing.assert_array_equal(d.x_train[0, :3], [2, vocab["awful"], vocab["film"]])
        assert d.len_train.tolist() == [3, 3, 2, 6, 2]


def test_imdb_missing(tmp_path):
    _write_imdb(tmp_path)
    for txt in (tmp_path / "aclImdb" / "test" / "neg").glob("*.txt"):
        txt.unlink()
    with pytest.raises(files.MissingDataError, match=r"test/neg/\*\.txt"):
        text.load_imdb(tmp_path)
    with pytest.raises(files.MissingDataError, match="aclImdb_v1.tar.gz"):
        text.load_imdb(tmp_path / "elsewhere")


# ----------------------------------------------------------------------------------------------
# MR sentence polarity.


def test_mr_synthetic_latin1(tmp_path):
    (tmp_path / "rt-polarity.pos").write_bytes("a charming caf\xe9 film\n".encode("latin-1") * 10)
    (tmp_path / "rt-polarity.neg").write_bytes(b"a dull film\n\n" * 10)
    d = text.load_mr(tmp_path)
    _check_invariants(d)
    assert (len(d.y_train), len(d.y_test)) == (18, 2)
    assert np.bincount(d.y_test).tolist() == [1, 1]
    assert "café" in d.vocab


def test_mr_real():
    directory = real_data_dir("rt_polarity")
    assert len(text.read_lines(directory / "rt-polarity.pos")) == 5331
    assert len(text.read_lines(directory / "rt-polarity.neg")) == 5331
    d = text.load("mr", directory.parent)
    _check_invariants(d)
    assert np.bincount(d.y_train).tolist() == [4798, 4798]
    assert np.bincount(d.y_test).tolist() == [533, 533]
    assert len(d.vocab) == 5000 and d.max_len == 64
    assert d.len_train.max() < 64 and d.len_test.max() < 64  # no sentence is truncated


# ----------------------------------------------------------------------------------------------
# Errors.


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="ag_news.*imdb.*mr"):
        text.load("sst2", tmp_path)
    with pytest.raises(ValueError, match="official.*test_only"):
        text.load_ag_news(tmp_path, split="train")


def test_missing_files(tmp_path):
    with pytest.raises(files.MissingDataError, match=r"test\.csv") as info:
        text.load_ag_news(tmp_path)
    assert str(tmp_path / "ag_news") in str(info.value) and "Kaggle" in str(info.value)
    (tmp_path / "rt-polarity.pos").write_text("fine\n")
    with pytest.raises(files.MissingDataError, match=r"rt-polarity\.neg") as info:
        text.load_mr(tmp_path)
    assert str(tmp_path) in str(info.value)
