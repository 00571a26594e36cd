"""Node-classification graphs: Planetoid (Cora, CiteSeer, PubMed) and Zachary's karate club."""

import dataclasses
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from uhn_jax.data import files

PLANETOID_NAMES = ("cora", "citeseer", "pubmed")
# The 8 files of one Planetoid dataset are `ind.<name>.<part>`.
PLANETOID_PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph", "test.index")
# The public split validates on the 500 nodes that follow the training nodes.
PLANETOID_NUM_VAL = 500

PLANETOID_ADVICE = (
    "The Planetoid files `ind.<name>.{x,y,tx,ty,allx,ally,graph,test.index}` come from the `data/` "
    "folder of https://github.com/kimiyoung/planetoid; put them in data_dir, data_dir/planetoid "
    "or data_dir/<name> and pass --config.data.data_dir=DIR."
)


@dataclasses.dataclass(frozen=True, eq=False)
class GraphData:
    """One graph for transductive node classification, held as numpy arrays.

    Edges are stored once per direction: an undirected edge {u, v} appears as (u, v) and as
    (v, u). The stored edge list has no self loops and no duplicates and is sorted by sender,
    then receiver; models that want self loops (GCN, GAT) add them.

    ``eq=False`` because field-wise ``==`` on numpy arrays is ambiguous; compare arrays directly.

    Attributes:
        name: Dataset name, e.g. ``"cora"``.
        x: Node features, float32, shape ``(N, F)``.
        y: Node labels, int32, shape ``(N,)``, in ``[0, num_classes)``. Nodes outside every
            mask may carry a placeholder label (0 for CiteSeer's padded nodes).
        senders: Source node of each directed edge, int32, shape ``(E,)``.
        receivers: Target node of each directed edge, int32, shape ``(E,)``.
        train_mask: Nodes whose labels are trained on, bool, shape ``(N,)``.
        val_mask: Validation nodes, bool, shape ``(N,)``.
        test_mask: Test nodes, bool, shape ``(N,)``. The three masks are disjoint.
        num_classes: Number of classes.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    train_mask: np.ndarray
    val_mask: np.ndarray
    test_mask: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        n = self.num_nodes
        if self.x.dtype != np.float32 or self.x.ndim != 2:
            raise ValueError(
                f"{self.name}: x must be 2-D float32, got {self.x.dtype} {self.x.shape}"
            )
        if self.num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
        if self.y.dtype != np.int32 or self.y.shape != (n,):
            raise ValueError(
                f"{self.name}: y must be int32 of shape ({n},), got {self.y.dtype} {self.y.shape}"
            )
        if n and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise ValueError(
                f"{self.name}: labels span [{self.y.min()}, {self.y.max()}], outside "
                f"[0, {self.num_classes})"
            )
        for field in ("senders", "receivers"):
            edges = getattr(self, field)
            if edges.dtype != np.int32 or edges.ndim != 1:
                raise ValueError(
                    f"{self.name}: {field} must be 1-D int32, got {edges.dtype} {edges.shape}"
                )
            if edges.size and (edges.min() < 0 or edges.max() >= n):
                raise ValueError(f"{self.name}: {field} holds node ids outside [0, {n})")
        if self.senders.shape != self.receivers.shape:
            raise ValueError(
                f"{self.name}: {self.senders.shape[0]} senders but "
                f"{self.receivers.shape[0]} receivers"
            )
        for field in ("train_mask", "val_mask", "test_mask"):
            mask = getattr(self, field)
            if mask.dtype != np.bool_ or mask.shape != (n,):
                raise ValueError(
                    f"{self.name}: {field} must be bool of shape ({n},), got "
                    f"{mask.dtype} {mask.shape}"
                )
        overlap = (
            (self.train_mask & self.val_mask)
            | (self.train_mask & self.test_mask)
            | (self.val_mask & self.test_mask)
        )
        if overlap.any():
            raise ValueError(f"{self.name}: masks overlap on {int(overlap.sum())} nodes")

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return self.x.shape[0]

    @property
    def num_features(self) -> int:
        """Feature width F."""
        return self.x.shape[1]

    @property
    def num_edges(self) -> int:
        """Number of directed edges E, twice the number of undirected edges."""
        return self.senders.shape[0]


def undirected_edges(pairs: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetrises an edge list, dropping self loops and duplicates.

    Args:
        pairs: Integer array of shape ``(M, 2)``, one (u, v) pair a row, in any order and
            direction, possibly with repeats and self loops.
        num_nodes: Number of nodes; every id must lie in ``[0, num_nodes)``.

    Returns:
        ``(senders, receivers)``, int32 arrays holding both directions of each undirected edge
        exactly once, sorted by sender, then receiver.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    both = np.concatenate([pairs, pairs[:, ::-1]])
    # One int64 key per directed edge; np.unique sorts the keys, i.e. by sender, then receiver.
    keys = np.unique(both[:, 0] * num_nodes + both[:, 1])
    return (keys // num_nodes).astype(np.int32), (keys % num_nodes).astype(np.int32)


def normalize_features(x: np.ndarray) -> np.ndarray:
    """Row-normalises node features the way PyG's ``NormalizeFeatures`` does.

    The global minimum is subtracted first (a no-op for the Planetoid features, which are
    non-negative and sparse), then each row is divided by its sum, clamped below at 1: rows
    summing to 1 or more end up summing to 1, all-zero rows stay zero, and rows summing to
    less than 1 are left as they are. Cora and CiteSeer features are binary, so every nonzero
    row sums to exactly 1 afterwards; PubMed's TF-IDF rows can sum to less than 1.

    Args:
        x: Features, shape ``(N, F)``.

    Returns:
        float32 features of the same shape.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.size:
        x = x - x.min()
    return x / np.maximum(x.sum(axis=1, keepdims=True), np.float32(1.0))


def find_planetoid_dir(name: str, data_dir: str | os.PathLike[str]) -> Path:
    """The directory that holds a Planetoid dataset's files.

    The candidates are ``data_dir``, ``data_dir/planetoid`` and ``data_dir/<name>``, in that
    order; the first holding any of the 8 files ``ind.<name>.*`` is used, so a partial copy
    is reported as such rather than silently skipped.

    Args:
        name: One of ``PLANETOID_NAMES`` (any case).
        data_dir: Directory to search.

    Returns:
        The chosen directory.

    Raises:
        ValueError: If ``name`` is not a Planetoid dataset.
        MissingDataError: If no candidate holds any of the files.
    """
    name = _check_planetoid_name(name)
    data_dir = Path(data_dir)
    candidates = (data_dir, data_dir / "planetoid", data_dir / name)
    for directory in candidates:
        if any((directory / f"ind.{name}.{part}").is_file() for part in PLANETOID_PARTS):
            return directory
    where = ", ".join(files.describe_dir(d) for d in candidates)
    raise files.MissingDataError(
        f"Missing data file `ind.{name}.x` (no `ind.{name}.*` file at all): looked in {where}. "
        f"{PLANETOID_ADVICE}"
    )


def load_planetoid(
    name: str, data_dir: str | os.PathLike[str], num_val: int = PLANETOID_NUM_VAL
) -> GraphData:
    """Loads Cora, CiteSeer or PubMed with the standard public split (Yang et al. 2016).

    This reproduces what the GCN/GAT reference code and PyG's ``Planetoid`` build:

    - Nodes ``0 .. len(allx)-1`` take their features and labels from ``allx``/``ally``; test
      node ``test.index[i]`` takes row ``i`` of ``tx``/``ty``. Test ids missing from the range
      ``len(allx) .. max(test.index)`` are isolated nodes without data (15 in CiteSeer): they
      get zero features and label 0 and belong to no mask. PyG pads only CiteSeer, whose index
      has gaps; any contiguous index (Cora, PubMed) gives the same result either way.
    - Labels are the argmax of the one-hot rows (an all-zero row gives 0, as in PyG).
    - Masks: train is nodes ``0 .. len(y)-1`` (20 per class), val the next ``num_val`` nodes,
      test the nodes listed in ``test.index``.
    - Features go through ``normalize_features`` (PyG's ``NormalizeFeatures``).
    - Edges come from the adjacency lists in ``graph``, symmetrised, without self loops
      (CiteSeer lists some) or duplicates (Cora and CiteSeer list some), see ``GraphData``.
      The Cora and CiteSeer lists are already symmetric, so this matches PyG's edge set.

    The files are pickles; load only files from a source you trust.

    Args:
        name: ``"cora"``, ``"citeseer"`` or ``"pubmed"`` (any case).
        data_dir: Directory searched as in ``find_planetoid_dir``.
        num_val: Number of validation nodes; 500 in the public split.

    Returns:
        The graph, named by the lower-case ``name``.

    Raises:
        ValueError: If ``name`` is unknown, or a file is malformed or inconsistent with the
            others (the message names the file).
        MissingDataError: If a file is missing.
    """
    name = _check_planetoid_name(name)
    paths = _planetoid_paths(name, find_planetoid_dir(name, data_dir))
    feats = {part: _read_features(paths[part]) for part in ("x", "tx", "allx")}
    onehots = {part: _read_onehot(paths[part]) for part in ("y", "ty", "ally")}
    graph = _read_pickle(paths["graph"])
    test_index = _read_test_index(paths["test.index"])
    num_features, num_classes = _check_planetoid_parts(paths, feats, onehots)
    num_labelled, num_train = len(feats["allx"]), len(feats["x"])
    _check_planetoid_split(paths, test_index, len(feats["tx"]), num_labelled, num_train, num_val)
    num_nodes = int(test_index.max()) + 1 if test_index.size else num_labelled

    x = np.zeros((num_nodes, num_features), np.float32)
    x[:num_labelled] = feats["allx"]
    x[test_index] = feats["tx"]
    onehot = np.zeros((num_nodes, num_classes), onehots["ally"].dtype)
    onehot[:num_labelled] = onehots["ally"]
    onehot[test_index] = onehots["ty"]
    y = np.argmax(onehot, axis=1).astype(np.int32)

    train_mask = np.zeros(num_nodes, bool)
    train_mask[:num_train] = True
    val_mask = np.zeros(num_nodes, bool)
    val_mask[num_train : num_train + num_val] = True
    test_mask = np.zeros(num_nodes, bool)
    test_mask[test_index] = True

    senders, receivers = undirected_edges(_graph_pairs(graph, num_nodes, paths["graph"]), num_nodes)
    return GraphData(
        name=name,
        x=normalize_features(x),
        y=y,
        senders=senders,
        receivers=receivers,
        train_mask=train_mask,
        val_mask=val_mask,
        test_mask=test_mask,
        num_classes=num_classes,
    )


def _planetoid_paths(name: str, directory: Path) -> dict[str, Path]:
    """The 8 files of ``name`` in ``directory``; ``MissingDataError`` naming a missing one."""
    paths = {part: directory / f"ind.{name}.{part}" for part in PLANETOID_PARTS}
    for path in paths.values():
        if not path.is_file():
            raise files.MissingDataError(
                f"Missing data file `{path.name}` in {files.describe_dir(directory)} (the other "
                f"`ind.{name}.*` files are there). {PLANETOID_ADVICE}"
            )
    return paths


def _check_planetoid_parts(paths: dict[str, Path], feats: dict, onehots: dict) -> tuple[int, int]:
    """``(num_features, num_classes)``; ``ValueError`` naming a file whose shape disagrees."""
    num_features = feats["allx"].shape[1]
    num_classes = onehots["ally"].shape[1]
    for part in ("x", "tx"):
        if feats[part].shape[1] != num_features:
            raise ValueError(
                f"{paths[part]}: {feats[part].shape[1]} feature columns, but "
                f"{paths['allx'].name} has {num_features}"
            )
    for part in ("y", "ty"):
        if onehots[part].shape[1] != num_classes:
            raise ValueError(
                f"{paths[part]}: {onehots[part].shape[1]} label columns, but "
                f"{paths['ally'].name} has {num_classes}"
            )
    for feat_part, label_part in (("x", "y"), ("tx", "ty"), ("allx", "ally")):
        if len(feats[feat_part]) != len(onehots[label_part]):
            raise ValueError(
                f"{paths[label_part]}: {len(onehots[label_part])} label rows, but "
                f"{paths[feat_part].name} has {len(feats[feat_part])} feature rows"
            )
    return num_features, num_classes


def _check_planetoid_split(
    paths: dict[str, Path],
    test_index: np.ndarray,
    num_test: int,
    num_labelled: int,
    num_train: int,
    num_val: int,
) -> None:
    """``ValueError`` naming the file if the test ids or the split sizes do not fit."""
    if len(test_index) != num_test:
        raise ValueError(
            f"{paths['test.index']}: {len(test_index)} test ids, but {paths['tx'].name} has "
            f"{num_test} rows"
        )
    if len(np.unique(test_index)) != len(test_index):
        raise ValueError(f"{paths['test.index']}: test ids repeat")
    if test_index.size and test_index.min() < num_labelled:
        raise ValueError(
            f"{paths['test.index']}: test id {test_index.min()} falls among the "
            f"{num_labelled} nodes of {paths['allx'].name}"
        )
    if num_train + num_val > num_labelled:
        raise ValueError(
            f"{paths['ally']}: {num_labelled} labelled nodes, too few for {num_train} training "
            f"and {num_val} validation nodes"
        )


# Zachary's karate club (Zachary 1977), node ids as in networkx's karate_club_graph(): for each
# member, the members with a larger id that they are linked to. 78 undirected edges.
_KARATE_NEIGHBOURS = (
    "1 2 3 4 5 6 7 8 10 11 12 13 17 19 21 31",  # 0: Mr. Hi, the instructor
    "2 3 7 13 17 19 21 30",
    "3 7 8 9 13 27 28 32",
    "7 12 13",
    "6 10",
    "6 10 16",  # 5
    "16",
    "",
    "30 32 33",
    "33",
    "",  # 10
    "",
    "",
    "33",
    "32 33",
    "32 33",  # 15
    "",
    "",
    "32 33",
    "33",
    "32 33",  # 20
    "",
    "32 33",
    "25 27 29 32 33",
    "25 27 31",
    "31",  # 25
    "29 33",
    "33",
    "31 33",
    "32 33",
    "32 33",  # 30
    "32 33",
    "33",
    "",  # 33: the club officer (president)
)
# Members who joined Mr. Hi's club after the split (networkx's 'club' == 'Mr. Hi'); the other 17
# joined the officer's club.
_KARATE_MR_HI = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 16, 17, 19, 21})
KARATE_CLASSES = ("Mr. Hi", "Officer")
# Fixed split: two labelled members per club, the two leaders among them; two per club to
# validate on; the other 26 members are the test set.
KARATE_TRAIN = (0, 1, 32, 33)
KARATE_VAL = (2, 3, 30, 31)


def karate_club() -> GraphData:
    """Zachary's karate club: 34 members, 78 friendships, two clubs after the split.

    A tiny built-in graph for smoke tests that needs no files. Class 0 is ``"Mr. Hi"`` and
    class 1 ``"Officer"`` (see ``KARATE_CLASSES``), 17 members each, as networkx's
    ``karate_club_graph()`` 'club' attribute. Features are one-hot node ids (the 34 x 34
    identity). Train on ``KARATE_TRAIN`` (members 0, 1 of Mr. Hi's club and 32, 33 of the
    officer's), validate on ``KARATE_VAL`` (2, 3 and 30, 31), test on the other 26.

    Returns:
        The graph, named ``"karate_club"``.
    """
    num_nodes = len(_KARATE_NEIGHBOURS)
    pairs = [
        (u, int(v)) for u, neighbours in enumerate(_KARATE_NEIGHBOURS) for v in neighbours.split()
    ]
    senders, receivers = undirected_edges(np.array(pairs), num_nodes)
    y = np.array([0 if v in _KARATE_MR_HI else 1 for v in range(num_nodes)], np.int32)
    masks = {}
    for split, ids in (("train", KARATE_TRAIN), ("val", KARATE_VAL)):
        masks[split] = np.zeros(num_nodes, bool)
        masks[split][list(ids)] = True
    return GraphData(
        name="karate_club",
        x=np.eye(num_nodes, dtype=np.float32),
        y=y,
        senders=senders,
        receivers=receivers,
        train_mask=masks["train"],
        val_mask=masks["val"],
        test_mask=~(masks["train"] | masks["val"]),
        num_classes=len(KARATE_CLASSES),
    )


def _check_planetoid_name(name: Any) -> str:
    lowered = name.lower() if isinstance(name, str) else None
    if lowered not in PLANETOID_NAMES:
        raise ValueError(
            f"Unknown Planetoid dataset {name!r}; choose one of {', '.join(PLANETOID_NAMES)}"
        )
    return lowered


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # The files pickle scipy.sparse.csr.csr_matrix, a module path scipy deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            with open(path, "rb") as f:
                # The files were written by Python 2; latin1 maps its byte strings 1:1.
                return pickle.load(f, encoding="latin1")
    except Exception as e:  # unpickling can fail in many ways; all mean a bad file
        raise ValueError(
            f"{path}: not a readable Planetoid pickle ({type(e).__name__}: {e})"
        ) from e


def _read_features(path: Path) -> np.ndarray:
    """A features file (scipy sparse or dense) as a dense float32 (rows, F) array."""
    obj = _read_pickle(path)
    array = obj.toarray() if scipy.sparse.issparse(obj) else obj
    try:
        array = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: expected a feature matrix, got {type(obj).__name__}") from e
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D feature matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: features contain NaN or Inf")
    return array


def _read_onehot(path: Path) -> np.ndarray:
    """A label file as a 2-D (rows, C) array of one-hot (or all-zero) rows."""
    obj = _read_pickle(path)
    try:
        array = np.asarray(obj.toarray() if scipy.sparse.issparse(obj) else obj)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: expected a one-hot label matrix, got {type(obj).__name__}"
        ) from e
    if array.ndim != 2 or array.shape[1] < 1 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"{path}: expected a 2-D numeric one-hot label matrix, got {array.dtype} {array.shape}"
        )
    if not np.isin(array, (0, 1)).all() or (array.sum(axis=1) > 1).any():
        raise ValueError(f"{path}: label rows must be one-hot (a single 1, or all zero)")
    return array


def _read_test_index(path: Path) -> np.ndarray:
    try:
        ids = [int(token) for token in path.read_text().split()]
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: expected one integer node id per line ({e})") from e
    return np.array(ids, dtype=np.int64)


def _graph_pairs(graph: Any, num_nodes: int, path: Path) -> np.ndarray:
    """The (node, neighbour) pairs of a dict of adjacency lists, as an (M, 2) int64 array."""
    if not isinstance(graph, dict):
        raise ValueError(f"{path}: expected a dict of adjacency lists, got {type(graph).__name__}")
    try:
        pairs = np.array(
            [(int(u), int(v)) for u, neighbours in graph.items() for v in neighbours], np.int64
        ).reshape(-1, 2)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: adjacency lists must map node ids to lists of node ids") from e
    if pairs.size and (pairs.min() < 0 or pairs.max() >= num_nodes):
        raise ValueError(
            f"{path}: node ids span [{pairs.min()}, {pairs.max()}], outside the {num_nodes} "
            "nodes given by the feature files"
        )
    return pairs
