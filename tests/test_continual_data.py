"""The continual benchmarks (uhn_jax.data.continual): split and permuted task sequences,
multi-head labels, and the multi-head loss and score (uhn_jax.training.tasks)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uhn_jax.data import continual as benchmarks
from uhn_jax.data import images


def _tiny_dataset():
    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat(np.arange(4), [5, 4, 6, 6]), np.repeat(np.arange(4), 2)
    return images.ArrayDataset(
        "tiny",
        rng.normal(size=(len(y_train), 2, 3)).astype(np.float32),
        y_train.astype(np.int32),
        rng.normal(size=(len(y_test), 2, 3)).astype(np.float32),
        y_test.astype(np.int32),
        num_classes=4,
    )


def test_split_tasks_are_class_pairs_relabelled_0_1_with_equal_training_sets():
    base = _tiny_dataset()
    seq = benchmarks.make_sequence(base, "split", 2)
    assert seq.train_size == 9  # classes 0+1: 9 examples, 2+3: 12
    t1 = seq.task(1)
    assert t1.num_classes == 2 and len(t1.y_train) == 9 and len(t1.y_test) == 4
    keep = np.isin(base.y_train, (2, 3))
    np.testing.assert_array_equal(t1.x_train, base.x_train[keep][:9])
    np.testing.assert_array_equal(t1.y_train, (base.y_train[keep][:9] == 3).astype(np.int32))
    with pytest.raises(ValueError, match="continual.num_tasks must be at most 2"):
        benchmarks.make_sequence(base, "split", 3)
    with pytest.raises(ValueError, match=r"task must be in \[0, 2\)"):
        seq.task(2)


def test_permuted_tasks_permute_pixels_and_keep_labels():
    base = _tiny_dataset()
    seq = benchmarks.make_sequence(base, "permuted", 3, (7, 9))
    np.testing.assert_array_equal(seq.task(0).x_test, base.x_test)
    t2 = seq.task(2)
    perm = np.random.default_rng(9).permutation(6)
    np.testing.assert_array_equal(t2.x_test.reshape(-1, 6), base.x_test.reshape(-1, 6)[:, perm])
    np.testing.assert_array_equal(t2.y_train, base.y_train)
    assert t2.num_classes == 4 and len({p.tobytes() for p in seq.perms}) == 3
    # One pixel has one permutation: a second task would repeat the first.
    with pytest.raises(ValueError, match="continual.permutation_seeds .* same permutation"):
        benchmarks.permutations(1, 2, (3,))


def test_multi_head_tasks_offset_their_labels_into_their_own_head():
    base = _tiny_dataset()
    seq = benchmarks.make_sequence(base, "split", 2, multi_head=True)
    assert seq.head_size == 2 and seq.num_classes == 4
    t1 = seq.task(1)
    single = benchmarks.make_sequence(base, "split", 2).task(1)
    np.testing.assert_array_equal(t1.y_train, single.y_train + 2)
    assert t1.num_classes == 4 and seq.task(0).y_test.max() <= 1


def test_multi_head_loss_and_score_are_over_the_label_head_only():
    from uhn_jax.training import tasks

    outputs = jnp.array([[5.0, 0.0, 1.0, 2.0], [0.0, 3.0, 9.0, -1.0]])
    y = jnp.array([3, 1])  # head 1, class 1; head 0, class 1
    loss, score = tasks.example_terms("image_cls", outputs, y, head_size=2)
    want = -jax.nn.log_softmax(jnp.array([[1.0, 2.0], [0.0, 3.0]]))[
        jnp.arange(2), jnp.array([1, 1])
    ]
    np.testing.assert_allclose(np.asarray(loss), np.asarray(want), rtol=1e-6)
    # Both are right within their head, though the other head holds the largest output.
    np.testing.assert_array_equal(np.asarray(score), [1.0, 1.0])
    _, flat = tasks.example_terms("image_cls", outputs, y)
    np.testing.assert_array_equal(np.asarray(flat), [0.0, 0.0])
