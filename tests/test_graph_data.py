"""Tests for uhn_jax.data.graphs."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from conftest import real_data_dir

from uhn_jax.data import files, graphs


def _check_graph_invariants(g: graphs.GraphData) -> None:
    """Properties every GraphData from this module must have, checked independently."""
    n = g.num_nodes
    assert g.x.dtype == np.float32 and g.x.shape == (n, g.num_features)
    assert g.y.dtype == np.int32 and g.y.shape == (n,)
    assert g.y.min() >= 0 and g.y.max() < g.num_classes
    masks = np.stack([g.train_mask, g.val_mask, g.test_mask]).astype(int)
    assert masks.sum(axis=0).max() == 1, "masks overlap"
    assert g.senders.dtype == np.int32 and g.receivers.dtype == np.int32
    pairs = set(zip(g.senders.tolist(), g.receivers.tolist(), strict=True))
    assert len(pairs) == g.num_edges, "duplicate edges"
    assert all(u != v for u, v in pairs), "self loop"
    assert all((v, u) in pairs for u, v in pairs), "edge list not symmetric"
    keys = g.senders.astype(np.int64) * n + g.receivers
    assert (np.diff(keys) > 0).all(), "edges not sorted by (sender, receiver)"


# ----------------------------------------------------------------------------------------------
# Real Cora and CiteSeer: the numbers PyG's Planetoid reports for the public split.


# Unpickling the raw files here triggers scipy's deprecation of the pickled csr module path.
@pytest.mark.filterwarnings("ignore:.*scipy.sparse.csr:DeprecationWarning")
@pytest.mark.parametrize(
    "name, nodes, features, classes, split, undirected_edges, padded",
    [
        ("cora", 2708, 1433, 7, (140, 500, 1000), 5278, 0),
        ("citeseer", 3327, 3703, 6, (120, 500, 1000), 4552, 15),
    ],
)
def test_real_planetoid(name, nodes, features, classes, split, undirected_edges, padded):
    planetoid_dir = real_data_dir("planetoid")
    # The parent directory is given: the loader finds the planetoid/ subdirectory itself.
    g = graphs.load_planetoid(name.capitalize(), planetoid_dir.parent)
    assert g.name == name
    assert (g.num_nodes, g.num_features, g.num_classes) == (nodes, features, classes)
    sizes = (g.train_mask.sum(), g.val_mask.sum(), g.test_mask.sum())
    assert tuple(int(s) for s in sizes) == split
    assert g.num_edges == 2 * undirected_edges
    _check_graph_invariants(g)
    # Public split: 20 training nodes per class, the first nodes, then 500 validation nodes.
    np.testing.assert_array_equal(np.bincount(g.y[g.train_mask], minlength=classes), 20)
    assert g.train_mask[: split[0]].all() and g.val_mask[split[0] : split[0] + 500].all()

    row_sums = g.x.sum(axis=1)
    zero = row_sums == 0
    np.testing.assert_allclose(row_sums[~zero], 1.0, rtol=1e-5)
    # Only the padded isolated test ids (CiteSeer) have no features; they are in no mask.
    assert int(zero.sum()) == padded
    unused = ~(g.train_mask | g.val_mask | g.test_mask)
    assert not (zero & ~unused).any()
    assert (g.y[zero] == 0).all()

    # Test node test.index[i] holds row i of tx, whatever the order of test.index.
    directory = planetoid_dir
    test_index = np.loadtxt(directory / f"ind.{name}.test.index", dtype=np.int64)
    with open(directory / f"ind.{name}.tx", "rb") as f:
        tx = pickle.load(f, encoding="latin1").toarray()
    with open(directory / f"ind.{name}.ty", "rb") as f:
        ty = pickle.load(f, encoding="latin1")
    assert not (np.diff(test_index) > 0).all(), "expected a shuffled test.index"
    np.testing.assert_array_equal(g.x[test_index] > 0, tx > 0)
    np.testing.assert_array_equal(g.y[test_index], ty.argmax(axis=1))
    assert g.test_mask[test_index].all()


# ----------------------------------------------------------------------------------------------
# Synthetic "pubmed" files in the exact Planetoid format, small enough to check by hand.
#
# 3 features, 3 classes. allx has 4 rows (nodes 0-3): nodes 0, 1 are training nodes (x, y),
# node 2 validation (num_val=1), node 3 labelled but unused. test.index lists 6, 4, 7 (shuffled,
# node 5 missing): tx/ty rows 0, 1, 2 belong to nodes 6, 4, 7, and node 5 is padded.

_ALLX = np.array(
    [
        [1.0, 1.0, 0.0],  # node 0 -> [0.5, 0.5, 0]
        [0.0, 2.0, 2.0],  # node 1 -> [0, 0.5, 0.5]
        [4.0, 0.0, 0.0],  # node 2 -> [1, 0, 0]
        [0.0, 0.0, 0.0],  # node 3 -> stays zero
    ],
    np.float32,
)
_ALLY = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 1]], np.int32)
_TX = np.array(
    [
        [0.0, 3.0, 1.0],  # node 6 -> [0, 0.75, 0.25]
        [0.25, 0.0, 0.25],  # node 4 -> sums to 0.5 < 1: left as is (NormalizeFeatures clamps)
        [2.0, 2.0, 4.0],  # node 7 -> [0.25, 0.25, 0.5]
    ],
    np.float32,
)
_TY = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.int32)  # nodes 6, 4, 7
_TEST_INDEX = [6, 4, 7]
# Adjacency lists with a duplicate (0-1 twice), a self loop (2-2), an edge listed in one
# direction only (3 -> 7) and node 5 absent.
_GRAPH = {0: [1, 1, 2], 1: [0], 2: [0, 2], 3: [7], 4: [6], 6: [4, 7], 7: [6]}

_EXPECTED_X = np.array(
    [
        [0.5, 0.5, 0.0],
        [0.0, 0.5, 0.5],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.25, 0.0, 0.25],
        [0.0, 0.0, 0.0],
        [0.0, 0.75, 0.25],
        [0.25, 0.25, 0.5],
    ],
    np.float32,
)
_EXPECTED_Y = [0, 2, 1, 2, 2, 0, 1, 0]  # node 5 is padded: label 0
_EXPECTED_EDGES = [
    (0, 1),
    (0, 2),
    (1, 0),
    (2, 0),
    (3, 7),
    (4, 6),
    (6, 4),
    (6, 7),
    (7, 3),
    (7, 6),
]


def _write_planetoid(directory: Path, name: str = "pubmed", **overrides) -> Path:
    """Writes the 8 Planetoid files; ``overrides`` replaces a part's object (None skips it)."""
    directory.mkdir(parents=True, exist_ok=True)
    parts = {
        "x": scipy.sparse.csr_matrix(_ALLX[:2]),
        "y": _ALLY[:2],
        "tx": scipy.sparse.csr_matrix(_TX),
        "ty": _TY,
        "allx": scipy.sparse.csr_matrix(_ALLX),
        "ally": _ALLY,
        "graph": _GRAPH,
        "test.index": "\n".join(str(i) for i in _TEST_INDEX) + "\n",
    }
    parts.update(overrides)
    for part, obj in parts.items():
        path = directory / f"ind.{name}.{part}"
        if obj is None:
            continue
        if isinstance(obj, str):
            path.write_text(obj)
        elif isinstance(obj, bytes):
            path.write_bytes(obj)
        else:
            with open(path, "wb") as f:
                pickle.dump(obj, f)
    return directory


def test_synthetic_pubmed_matches_hand_computed(tmp_path):
    _write_planetoid(tmp_path)
    g = graphs.load_planetoid("pubmed", tmp_path, num_val=1)
    assert g.name == "pubmed" and g.num_classes == 3 and g.num_nodes == 8
    np.testing.assert_array_equal(g.x, _EXPECTED_X)
    np.testing.assert_array_equal(g.y, _EXPECTED_Y)
    np.testing.assert_array_equal(np.flatnonzero(g.train_mask), [0, 1])
    np.testing.assert_array_equal(np.flatnonzero(g.val_mask), [2])
    np.testing.assert_array_equal(np.flatnonzero(g.test_mask), [4, 6, 7])
    edges = list(zip(g.senders.tolist(), g.receivers.tolist(), strict=True))
    assert edges == _EXPECTED_EDGES
    _check_graph_invariants(g)


def test_synthetic_dense_features_are_accepted(tmp_path):
    _write_planetoid(tmp_path, x=_ALLX[:2], tx=_TX, allx=_ALLX)
    g = graphs.load_planetoid("pubmed", tmp_path, num_val=1)
    np.testing.assert_array_equal(g.x, _EXPECTED_X)


def test_public_split_needs_500_validation_nodes(tmp_path):
    _write_planetoid(tmp_path)
    with pytest.raises(ValueError, match=r"ind\.pubmed\.ally.*500 validation"):
        graphs.load_planetoid("pubmed", tmp_path)


@pytest.mark.parametrize("subdir", ["planetoid", "pubmed"])
def test_files_found_in_subdirectory(tmp_path, subdir):
    _write_planetoid(tmp_path / subdir)
    assert graphs.find_planetoid_dir("PubMed", tmp_path) == tmp_path / subdir
    g = graphs.load_planetoid("PubMed", tmp_path, num_val=1)
    np.testing.assert_array_equal(g.x, _EXPECTED_X)


def test_data_dir_itself_wins_over_subdirectories(tmp_path):
    _write_planetoid(tmp_path)
    _write_planetoid(tmp_path / "planetoid", **{"test.index": "garbage"})
    assert graphs.find_planetoid_dir("pubmed", tmp_path) == tmp_path


# ----------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name", ["pubmeds", "ogbn-arxiv", "", None])
def test_unknown_name_lists_choices(tmp_path, name):
    with pytest.raises(ValueError, match="cora, citeseer, pubmed"):
        graphs.load_planetoid(name, tmp_path)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(files.MissingDataError) as info:
        graphs.load_planetoid("cora", missing)
    message = str(info.value)
    assert "ind.cora.x" in message and "kimiyoung/planetoid" in message
    assert str(missing) in message and "does not exist" in message
    assert str(missing / "planetoid") in message and str(missing / "cora") in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_one_file(tmp_path):
    _write_planetoid(tmp_path, **{"test.index": None})
    with pytest.raises(files.MissingDataError) as info:
        graphs.load_planetoid("pubmed", tmp_path, num_val=1)
    message = str(info.value)
    assert "`ind.pubmed.test.index`" in message and str(tmp_path) in message
    assert "kimiyoung/planetoid" in message


@pytest.mark.parametrize(
    "overrides, bad_file, pattern",
    [
        ({"ty": _TY[:2]}, "ind.pubmed.ty", "2 label rows"),
        ({"ally": _ALLY + np.eye(4, 3, dtype=np.int32)}, "ind.pubmed.ally", "one-hot"),
        ({"y": _ALLY[:2, :2]}, "ind.pubmed.y", "label columns"),
        ({"tx": scipy.sparse.csr_matrix(_TX[:, :2])}, "ind.pubmed.tx", "feature columns"),
        ({"ty": _TY * 2}, "ind.pubmed.ty", "one-hot"),
        ({"test.index": "6\n4\n"}, "ind.pubmed.test.index", "2 test ids"),
        ({"test.index": "6\nfour\n7\n"}, "ind.pubmed.test.index", "integer"),
        ({"test.index": "6\n6\n7\n"}, "ind.pubmed.test.index", "repeat"),
        ({"test.index": "6\n2\n7\n"}, "ind.pubmed.test.index", "falls among"),
        ({"graph": {0: [9]}}, "ind.pubmed.graph", "outside"),
        ({"graph": [[1], [0]]}, "ind.pubmed.graph", "dict"),
        ({"allx": b"not a pickle"}, "ind.pubmed.allx", "readable"),
    ],
)
def test_malformed_file_is_named(tmp_path, overrides, bad_file, pattern):
    _write_planetoid(tmp_path, **overrides)
    with pytest.raises(ValueError, match=pattern) as info:
        graphs.load_planetoid("pubmed", tmp_path, num_val=1)
    assert str(tmp_path / bad_file) in str(info.value)


# ----------------------------------------------------------------------------------------------
# Helpers and GraphData checks.


def test_normalize_features_follows_pyg():
    x = np.array([[2.0, 2.0], [0.0, 0.0], [0.2, 0.3], [-1.0, 1.0]], np.float32)
    # PyG subtracts the global minimum (-1), then divides by row sums clamped below at 1.
    expected = np.array([[0.5, 0.5], [0.5, 0.5], [0.48, 0.52], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(graphs.normalize_features(x), expected, rtol=1e-6)
    small = np.array([[0.0, 0.25], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(graphs.normalize_features(small), small)


def test_graph_data_rejects_overlapping_masks():
    g = graphs.karate_club()
    with pytest.raises(ValueError, match="masks overlap on 4 nodes"):
        graphs.GraphData(
            name="bad",
            x=g.x,
            y=g.y,
            senders=g.senders,
            receivers=g.receivers,
            train_mask=g.train_mask,
            val_mask=g.val_mask,
            test_mask=g.train_mask,
            num_classes=2,
        )


# ----------------------------------------------------------------------------------------------
# Karate club.


def test_karate_club():
    g = graphs.karate_club()
    assert g.name == "karate_club"
    assert (g.num_nodes, g.num_classes, g.num_edges) == (34, 2, 2 * 78)
    _check_graph_invariants(g)
    np.testing.assert_array_equal(g.x, np.eye(34, dtype=np.float32))
    degrees = np.bincount(g.senders, minlength=34)
    # Zachary's two leaders have the highest degrees; degrees sum to twice the 78 edges.
    assert (degrees[0], degrees[33], degrees[32]) == (16, 17, 12)
    assert degrees.min() == 1 and degrees[11] == 1
    assert np.bincount(g.y).tolist() == [17, 17]
    assert g.y[0] == 0 and g.y[33] == 1 and g.y[8] == 0 and g.y[9] == 1
    np.testing.assert_array_equal(np.flatnonzero(g.train_mask), [0, 1, 32, 33])
    np.testing.assert_array_equal(np.flatnonzero(g.val_mask), [2, 3, 30, 31])
    assert g.test_mask.sum() == 26 and (g.train_mask | g.val_mask | g.test_mask).all()
    for mask in (g.train_mask, g.val_mask):
        np.testing.assert_array_equal(np.bincount(g.y[mask]), [2, 2])
