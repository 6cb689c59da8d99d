"""msreid.train.sampling: P x K and uniform plans, validation carved from the train ids."""

from __future__ import annotations

import numpy as np
import pytest

from msreid.data.batches import share_size
from msreid.errors import UserError
from msreid.train.sampling import (
    epoch_plan,
    pk_plan,
    share_positions,
    split_rows,
    uniform_plan,
    worker_share,
)


def _check_pk(batch, labels, p, k):
    ids = labels[batch].reshape(p, k)
    assert (ids == ids[:, :1]).all()  # K consecutive positions share an id
    assert len(set(ids[:, 0].tolist())) == p  # P distinct ids


def test_pk_plan_composition():
    labels = np.repeat(np.arange(4), 8)  # 4 ids x 8 tuples, K = 4: 2 chunks per id
    plan = pk_plan(labels, p=2, k=4, rng=np.random.default_rng(0))
    # 8 chunks, 2 per batch; the greedy draw may strand the last id's 2 chunks: 3 or 4 batches
    assert plan.shape in [(3, 8), (4, 8)]
    for batch in plan:
        _check_pk(batch, labels, 2, 4)
    assert len(set(plan.ravel().tolist())) == plan.size  # no tuple twice in one epoch


def test_pk_plan_draws_with_replacement_for_small_ids():
    labels = np.array([0, 0, 1, 1, 1, 1, 2])  # ids 0 and 2 have fewer than K = 4 tuples
    plan = pk_plan(labels, p=3, k=4, rng=np.random.default_rng(1))
    assert plan.shape == (1, 12)  # one chunk each, all three ids in one batch
    _check_pk(plan[0], labels, 3, 4)
    assert set(plan[0][labels[plan[0]] == 2].tolist()) == {6}


def test_uniform_plan_is_a_permutation_minus_the_remainder():
    plan = uniform_plan(10, 3, np.random.default_rng(0))
    assert plan.shape == (3, 3) and len(set(plan.ravel().tolist())) == 9  # 10 // 3 = 3 batches
    assert set(plan.ravel().tolist()) <= set(range(10))


def test_epoch_plans_reshuffle_per_epoch_and_are_reproducible():
    labels = np.repeat(np.arange(6), 5)
    kw = dict(mode="pk", batch_size=6, p=3, k=2, seed=5)
    e0 = epoch_plan(labels, epoch=0, **kw)
    assert e0.shape[1] == 6 and e0.shape[0] >= 2
    assert np.array_equal(e0, epoch_plan(labels, epoch=0, **kw))
    assert not np.array_equal(e0, epoch_plan(labels, epoch=1, **kw)[: len(e0)])


def test_uniform_epoch_plan_is_the_documented_permutation_whatever_the_workers():
    # the rule by hand: permutation of generator (seed, epoch, 0), cut into rows of the global batch
    perm = np.random.default_rng([5, 3, 0]).permutation(30)
    plan = epoch_plan(np.zeros(30, np.int64), mode="uniform", batch_size=8, p=0, k=0, seed=5,
                      epoch=3)
    assert np.array_equal(plan, perm[:24].reshape(3, 8))  # 30 // 8 = 3 global batches
    with pytest.raises(TypeError):  # the plan does not know the number of workers
        epoch_plan(np.zeros(30, np.int64), mode="uniform", batch_size=8, p=0, k=0, seed=5,
                   epoch=3, world_size=2)


def test_worker_shares_are_contiguous_equal_cuts_of_each_global_batch():
    plan = np.array([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
    assert worker_share(plan, 0, 1).tolist() == plan.tolist()
    assert worker_share(plan, 0, 2).tolist() == [[10, 11, 12], [20, 21, 22]]
    assert worker_share(plan, 1, 2).tolist() == [[13, 14, 15], [23, 24, 25]]
    assert worker_share(plan, 2, 3).tolist() == [[14, 15], [24, 25]]
    # positions in the epoch's plan [2, 6]: step s, rank r of w, share b -> s*6 + r*b + j
    assert share_positions(1, 1, 3, 2).tolist() == [9, 10, 11]
    assert share_positions(0, 2, 2, 3).tolist() == [4, 5]
    assert share_positions(1, 0, 6, 1).tolist() == [6, 7, 8, 9, 10, 11]
    with pytest.raises(ValueError):
        worker_share(plan, 0, 4)


def test_share_size_and_the_indivisible_batch_error():
    assert share_size("uniform", 16, 0, 0, 2) == 8
    assert share_size("pk", 99, 4, 4, 4) == 4  # P x K = 16 is the global batch
    with pytest.raises(UserError, match=r"data.batch_size=30 .*run.num_workers=4"):
        share_size("uniform", 30, 0, 0, 4)
    with pytest.raises(UserError, match=r"data.P x data.K = 3 x 3 = 9 .*run.num_workers=2"):
        share_size("pk", 16, 3, 3, 2)


def _toy_manifest():
    # 10 train ids x 2 cameras x 3 tuples, then 2 test ids in query/gallery
    pid = np.repeat(np.arange(100, 110), 6)
    camera = np.tile(np.repeat([0, 1], 3), 10)
    split = np.array(["train"] * 60 + ["query", "gallery", "gallery", "query"])
    pid = np.concatenate([pid, [200, 200, 201, 201]])
    camera = np.concatenate([camera, [0, 1, 0, 1]])
    return split, pid, camera


def test_validation_ids_are_disjoint_from_training_ids():
    split, pid, camera = _toy_manifest()
    rows = split_rows(split, pid, camera, val_ids=0.3, per_camera=1, seed=0)
    val = np.concatenate([rows.val_query, rows.val_gallery])
    assert len(set(pid[val])) == 3  # round(0.3 * 10) ids held out
    assert set(pid[val]).isdisjoint(set(pid[rows.train]))
    assert len(rows.train) + len(val) == 60
    # one query per (id, camera): 3 ids x 2 cameras; the other 2 per pair are gallery
    assert len(rows.val_query) == 6 and len(rows.val_gallery) == 12
    assert sorted(zip(pid[rows.val_query], camera[rows.val_query])) == \
        sorted({(p, c) for p in set(pid[val]) for c in (0, 1)})
    # labels are contiguous over the 7 remaining ids, in pid order
    assert rows.num_classes == 7 and sorted(set(rows.train_labels)) == list(range(7))
    kept = sorted(set(pid[rows.train]))
    assert all(kept[lab] == p for lab, p in zip(rows.train_labels, pid[rows.train]))
    assert rows.test_query.tolist() == [60, 63] and rows.test_gallery.tolist() == [61, 62]


def test_validation_split_is_deterministic_from_the_seed():
    split, pid, camera = _toy_manifest()
    a = split_rows(split, pid, camera, val_ids=2, per_camera=1, seed=1)
    b = split_rows(split, pid, camera, val_ids=2, per_camera=1, seed=1)
    assert np.array_equal(a.val_query, b.val_query) and np.array_equal(a.train, b.train)
    seen = {tuple(split_rows(split, pid, camera, val_ids=2, per_camera=1, seed=s).val_query)
            for s in range(6)}
    assert len(seen) > 1  # the seed matters


def test_no_validation_and_too_many_validation_ids():
    split, pid, camera = _toy_manifest()
    rows = split_rows(split, pid, camera, val_ids=0, per_camera=1, seed=0)
    assert rows.val_query.size == 0 and rows.num_classes == 10 and rows.train.size == 60
    with pytest.raises(UserError, match="data.val_ids"):
        split_rows(split, pid, camera, val_ids=10, per_camera=1, seed=0)


def test_fit_plan_shares_carry_their_plan_positions():
    from msreid.train.plan import Plan

    rows = np.arange(24).reshape(3, 8)  # epoch 0: steps 0, 1; epoch 1: step 0; global batch 8
    plan = Plan(rows=rows, labels=rows % 4, epochs=np.array([0, 0, 1]), steps=np.array([0, 1, 0]),
                steps_per_epoch=[2, 1])
    share = plan.share(1, 2)  # rank 1 of 2: the second half of every batch
    assert share["rows"].tolist() == [[4, 5, 6, 7], [12, 13, 14, 15], [20, 21, 22, 23]]
    assert share["starts"].tolist() == [4, 12, 4]  # step * 8 + rank * 4
    resumed = plan.share(0, 1, first_epoch=1)  # one worker, resumed at epoch 1
    assert resumed["rows"].tolist() == [list(range(16, 24))] and resumed["starts"].tolist() == [0]
    assert resumed["epochs"].tolist() == [1] and resumed["labels"].tolist() == [[0, 1, 2, 3] * 2]
