"""msreid.train.pipeline on Ray Data: row indexing, decoding, P x K batches across split consumers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from msreid.data.decode import decode_row
from msreid.data.schema import read_manifest
from msreid.data.transforms import AugmentParams, stack_tuples
from msreid.train.sampling import epoch_plan, split_rows


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    from msreid.data.ingest import ingest
    from msreid.data.synth import SynthSpec, generate

    base = tmp_path_factory.mktemp("pipeline_data")
    root = generate("rgbnt100", base / "synth",
                    SynthSpec(ids=6, cameras=3, tuples_per_id=6, height=32, width=64, seed=2))
    ingest("rgbnt100", root, base / "manifest", piece_size="auto")
    return str(base / "manifest")


@pytest.fixture(scope="module")
def loaded(ray_session, manifest):
    from msreid.train.pipeline import load_manifest

    return load_manifest(manifest)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_rows_are_numbered_as_read_manifest(loaded, manifest):
    index, meta = loaded
    table = read_manifest(manifest, columns=["split", "pid", "camera"])
    assert meta.pid.tolist() == table.column("pid").to_pylist()
    assert meta.split.tolist() == table.column("split").to_pylist()
    assert index.offsets[-1] == table.num_rows


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_eval_dataset_decodes_the_requested_rows(loaded, manifest):
    from msreid.train.pipeline import DecodeSpec, eval_dataset

    index, meta = loaded
    rows = np.array([5, 0, 40, 7, 41])
    spec = DecodeSpec(index, ("rgb", "tir"), (16, 32), None)
    got = {}
    for b in eval_dataset(spec, rows, batch_size=2).iter_batches(batch_size=2):
        for j, r in enumerate(b["rows"]):
            got[int(r)] = (b["rgb"][j], b["tir"][j])
    table = read_manifest(manifest).to_pylist()  # the plain path: decode + resize by hand
    for r in rows:
        ref = stack_tuples([decode_row(table[r], ("rgb", "tir"))], ("rgb", "tir"), (16, 32))[0]
        assert np.array_equal(got[int(r)][0], ref[0]) and np.array_equal(got[int(r)][1], ref[1])


def _consume(it, out: list) -> None:
    for b in it.iter_batches(batch_size=1):
        out.append((int(b["epoch"][0]), int(b["step"][0]), b["rows"][0].copy(),
                    b["labels"][0].copy(), b["rgb"][0].shape))


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_pk_batches_hold_across_two_split_consumers(loaded):
    """As the trainer does: streaming_split(2, equal=True); each consumer gets whole P x K batches."""
    from msreid.train.pipeline import DecodeSpec, train_dataset

    index, meta = loaded
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=0, per_camera=1, seed=0)
    p, k = 3, 2
    plans = [epoch_plan(rows.train_labels, mode="pk", batch_size=6, p=p, k=k, seed=0, epoch=e)
             for e in range(2)]
    plans = [x[:len(x) // 2 * 2] for x in plans]  # whole batches, an even number per epoch
    pos = np.concatenate(plans)
    epochs = np.concatenate([np.full(len(x), e) for e, x in enumerate(plans)])
    steps = np.concatenate([np.arange(len(x)) for x in plans])
    spec = DecodeSpec(index, ("rgb", "nir", "tir"), (16, 32), AugmentParams(pad=2), 0)
    ds = train_dataset(spec, rows.train[pos], rows.train_labels[pos], epochs, steps, steps * p * k)
    shards = ds.streaming_split(2, equal=True)
    got: list[list] = [[], []]
    threads = [threading.Thread(target=_consume, args=(s, g)) for s, g in zip(shards, got)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert len(got[0]) == len(got[1]) == len(pos) // 2  # equal shares of whole batches
    for worker in got:
        for _, _, r, labels, shape in worker:
            pids = meta.pid[r].reshape(p, k)  # manifest pids of the batch's rows
            assert (pids == pids[:, :1]).all() and len(set(pids[:, 0])) == p
            assert (labels.reshape(p, k) == labels.reshape(p, k)[:, :1]).all()
            assert shape == (6, 3, 16, 32)
    seen = sorted((e, s) for worker in got for e, s, *_ in worker)
    assert seen == sorted(zip(epochs.tolist(), steps.tolist()))  # every batch exactly once


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_decoded_tuples_are_the_same_in_a_batch_of_16_or_two_shares_of_8(loaded):
    """The decode UDF draws each tuple's augmentation from its plan position, not its batch."""
    import ray

    from msreid.train.pipeline import DecodeSpec, _decode_plan_rows, decode_tuples

    index, meta = loaded
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=0, per_camera=1, seed=0)
    plan = epoch_plan(rows.train_labels, mode="uniform", batch_size=16, p=0, k=0, seed=3,
                      epoch=1)[:2]  # two global batches of 16
    spec = DecodeSpec(index, ("rgb", "nir"), (16, 32), AugmentParams(pad=3, erase_prob=0.5), 9)

    def decode(shares: np.ndarray, steps: list[int], starts: list[int]) -> dict:
        arrays = (rows.train[shares], rows.train_labels[shares], np.ones(len(shares), np.int64),
                  np.asarray(steps), np.asarray(starts))
        refs = tuple(ray.put(a) for a in arrays)
        return _decode_plan_rows({"id": np.arange(len(shares))}, spec, refs)

    whole = decode(plan, [0, 1], [0, 16])
    halves = decode(np.concatenate([plan[:, :8], plan[:, 8:]]), [0, 1, 0, 1], [0, 16, 8, 24])
    for name in ("rgb", "nir", "rows"):
        for step in (0, 1):
            joined = np.concatenate([halves[name][step], halves[name][2 + step]])
            assert np.array_equal(whole[name][step], joined), (name, step)
    # the augmentation did something: the plain decode differs
    plain = DecodeSpec(index, ("rgb", "nir"), (16, 32), None, 9)
    assert not np.array_equal(decode_tuples(plain, rows.train[plan[0]])[:, 0], whole["rgb"][0])


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_half_cpu_tasks_run_inside_a_trial_reservation_of_one_cpu(ray_session, manifest):
    """The smoke suite's trial: 0.5 CPU for the trial, 0.5 for its data tasks (data.decode_cpus).

    A task asking for a whole CPU (e.g. read_parquet's file sampling) never fits there and
    waits forever: the timeout catches that hang.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from msreid.orchestration.trainable import data_in_trial_reservation
    from msreid.train.pipeline import DecodeSpec, eval_dataset, load_manifest

    @ray.remote(num_cpus=0.5)
    def trial(path: str) -> tuple[list[int], list[int]]:
        with data_in_trial_reservation():
            index, meta = load_manifest(path, num_cpus=0.5)
            spec = DecodeSpec(index, ("rgb",), (16, 32), None)
            got = [int(r) for b in eval_dataset(spec, np.arange(4), batch_size=2, num_cpus=0.5)
                   .iter_batches(batch_size=2) for r in b["rows"]]
        return meta.pid.tolist(), got

    group = placement_group([{"CPU": 0.5}, {"CPU": 0.5}])
    ray.get(group.ready(), timeout=60)
    try:
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                    placement_group_capture_child_tasks=True)
        pids, rows = ray.get(trial.options(scheduling_strategy=strategy).remote(manifest), timeout=150)
    finally:
        remove_placement_group(group)
    assert pids == read_manifest(manifest, columns=["pid"]).column("pid").to_pylist()
    assert rows == [0, 1, 2, 3]
