"""Synthetic benchmark: released on-disk layout, determinism, challenges, atomic output."""

from __future__ import annotations

import csv
import filecmp
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msreid.data import synth
from msreid.data.synth import SynthSpec, TuplePlan, generate, plan_dataset

NAME = re.compile(r"^(\d{4})_c(\d{3})_(\d{5})\.jpg$")
TAGS = {"normal", "low_illumination", "black_night", "glare", "shadow", "occlusion",
        "view_change"}
SMALL = SynthSpec(ids=6, cameras=4, tuples_per_id=8, height=32, width=64, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return generate("rgbnt100", tmp_path_factory.mktemp("small") / "ds", SMALL)


def parse_folder(folder: Path) -> list[tuple[int, int, int]]:
    """(id, camera, n) of every file; asserts every name parses."""
    out = []
    for path in sorted(folder.iterdir()):
        m = NAME.match(path.name)
        assert m, path.name
        out.append(tuple(int(g) for g in m.groups()))
    return out


def test_file_name_format():
    # id 7, camera 2 (0-based) -> c003, index 11 (0-based) -> 00012
    assert TuplePlan(7, 2, 11, "train", "normal").file_name == "0007_c003_00012.jpg"


def test_released_folders_names_and_sizes(small):
    assert small.name == "rgbir"
    assert sorted(p.name for p in small.iterdir()) == [
        "bounding_box_test", "bounding_box_train", "challenges.csv", "query"]
    train = parse_folder(small / "bounding_box_train")
    gallery = parse_folder(small / "bounding_box_test")
    train_ids, test_ids = {t[0] for t in train}, {t[0] for t in gallery}
    # 6 ids per split, 1-based, disjoint: together exactly 1..12
    assert len(train_ids) == len(test_ids) == 6 and train_ids | test_ids == set(range(1, 13))
    for rows in (train, gallery):
        assert {c for _, c, _ in rows} <= {1, 2, 3, 4}  # 4 cameras, 1-based on disk
        per_id = Counter(i for i, _, _ in rows)
        # 8 tuples per id on average: each id gets round(0.75*8)=6 .. round(1.25*8)=10
        assert all(6 <= n <= 10 for n in per_id.values()), per_id
        # at least 2 cameras per id, so every query has a cross-camera match
        assert all(len({c for i2, c, _ in rows if i2 == i}) >= 2 for i in per_id)
    for path in list((small / "bounding_box_train").iterdir())[:10]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (3 * 64, 32)  # RGB | NIR | TIR, each 64 wide, 32 high


def test_nir_and_tir_pieces_are_grey(small):
    img = np.asarray(Image.open(next((small / "bounding_box_test").iterdir())), dtype=int)
    for k in (1, 2):  # NIR, TIR; skip 4 columns at each seam (chroma upsampling bleeds)
        piece = img[:, k * 64 + 4:(k + 1) * 64 - 4]
        assert np.abs(piece[..., 0] - piece[..., 1]).max() <= 3
        assert np.abs(piece[..., 0] - piece[..., 2]).max() <= 3


def test_queries_are_copies_of_gallery_files_spread_over_cameras(small):
    gallery_dir, query_dir = small / "bounding_box_test", small / "query"
    queries = parse_folder(query_dir)
    gallery = parse_folder(gallery_dir)
    for path in query_dir.iterdir():
        assert filecmp.cmp(path, gallery_dir / path.name, shallow=False), path.name
    test_ids = {i for i, _, _ in gallery}
    assert {i for i, _, _ in queries} == test_ids  # >= 1 query per test id, none else
    for pid in test_ids:
        n = sum(1 for i, _, _ in gallery if i == pid)
        q_cams = [c for i, c, _ in queries if i == pid]
        assert len(q_cams) == max(1, round(0.2 * n))  # 20% of the id's gallery
        n_cams = len({c for i, c, _ in gallery if i == pid})
        assert len(set(q_cams)) == min(len(q_cams), n_cams)  # one per camera first


def test_challenge_sidecar_covers_every_file(small):
    with open(small / "challenges.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "challenge"]
    tags = dict(rows[1:])
    assert len(tags) == len(rows) - 1  # no file listed twice
    files = {f"{d}/{p.name}" for d in ("bounding_box_train", "query", "bounding_box_test")
             for p in (small / d).iterdir()}
    assert set(tags) == files
    assert set(tags.values()) <= TAGS
    for rel, tag in tags.items():
        if rel.startswith("query/"):
            assert tags["bounding_box_test/" + rel[len("query/"):]] == tag


def test_challenge_and_split_proportions():
    # Plan only (no rendering): 300 + 300 ids x ~20 tuples = ~12,000 tuples.
    tuples, queries = plan_dataset(SynthSpec(ids=300, tuples_per_id=20))
    # mean per id is 20 (uniform over 15..25): 600 * 20 = 12,000, +-2%
    assert 11_760 <= len(tuples) <= 12_240
    # cameras per id: 8 - Binomial(6, 0.2) -> mean 8 - 1.2 = 6.8 (sd 0.98 / sqrt(600) = 0.04)
    cams = {}
    for t in tuples:
        cams.setdefault(t.pid, set()).add(t.camera)
    assert abs(np.mean([len(c) for c in cams.values()]) - 6.8) < 0.15
    assert min(len(c) for c in cams.values()) >= 2
    counts = Counter(t.challenge for t in tuples)
    expected = {"normal": 0.55, "low_illumination": 0.12, "black_night": 0.08, "glare": 0.06,
                "shadow": 0.08, "occlusion": 0.05, "view_change": 0.06}
    for tag, p in expected.items():
        # binomial sd <= sqrt(.25 / 12000) = 0.0046; allow 0.015 (> 3 sd)
        assert abs(counts[tag] / len(tuples) - p) < 0.015, (tag, counts[tag])
    gallery = sum(t.split == "gallery" for t in tuples)
    assert abs(len(queries) / gallery - 0.2) < 0.01  # query = 20% of gallery, as released


def test_same_seed_is_byte_identical_other_seed_differs(tmp_path):
    spec = SynthSpec(ids=3, cameras=3, tuples_per_id=4, height=16, width=32, seed=5)
    a = generate("rgbn300", tmp_path / "a", spec)
    b = generate("rgbn300", tmp_path / "b", spec)
    c = generate("rgbn300", tmp_path / "c", SynthSpec(**{**spec.__dict__, "seed": 6}))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    with Image.open(next((a / "bounding_box_train").iterdir())) as im:
        assert im.size == (2 * 32, 16)  # RGBN300: RGB | NIR only
    common = [f for f in files if (c / f).is_file() and f.suffix == ".jpg"]
    assert sum((a / f).read_bytes() != (c / f).read_bytes() for f in common) == len(common)


def test_tuples_do_not_depend_on_generation_order():
    spec = SynthSpec(ids=2, cameras=3, tuples_per_id=4, height=16, width=32)
    tuples, _ = plan_dataset(spec)
    ids = synth.make_identities(4, spec.seed)

    def render(tp):
        return synth.render_tuple(ids[tp.pid - 1], tp, ("rgb", "nir", "tir"), 16, 32, spec.seed)

    forward = [render(tp) for tp in tuples]
    backward = [render(tp) for tp in reversed(tuples)][::-1]
    for f, b in zip(forward, backward):
        assert all(np.array_equal(f[k], b[k]) for k in f)
