"""The hard synthetic variant: properties of its pixels and files that can be checked by hand.

Each test measures the generated data (hot-spot centroids, contrast, attribute
sets read from synth.json) and compares it with a number worked out in the
test, never with the generator's own output for the same call.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msreid.cli import main as cli_main
from msreid.data import synth
from msreid.data.synth import SynthSpec, TuplePlan, generate
from msreid.errors import UserError

H, W = 64, 128
SPECTRA = ("rgb", "nir", "tir")
ATTRIBUTES = ("shape", "paint", "marking", "heat")


def grey(pieces: dict[str, np.ndarray], name: str) -> np.ndarray:
    img = pieces[name].astype(float)
    return img.mean(axis=2)


def render(variant: str, identity: synth.Identity, camera: int = 0, index: int = 0,
           challenge: str = "normal") -> dict[str, np.ndarray]:
    plan = TuplePlan(identity.pid, camera=camera, index=index, split="train", challenge=challenge)
    fn = synth.render_tuple_hard if variant == "hard" else synth.render_tuple
    return fn(identity, plan, SPECTRA, H, W, 0)


def hot_spot(tir: np.ndarray) -> tuple[float, float]:
    """(x, y) pixel centroid of the hottest region: values in the top 40% of max - median."""
    hi, mid = tir.max(), np.median(tir)
    weight = np.clip(tir - (hi - 0.4 * (hi - mid)), 0, None)
    y, x = np.mgrid[0:tir.shape[0], 0:tir.shape[1]]
    return (weight * x).sum() / weight.sum() + 0.5, (weight * y).sum() / weight.sum() + 0.5


@pytest.mark.parametrize("camera", range(8))
def test_tir_is_misaligned_by_the_thermal_cameras_offset_and_scale(camera):
    # One hot spot (heat pattern 1: rear engine only) on a black hatchback. The easy
    # variant's TIR is pixel-aligned with RGB and NIR and the hard variant draws the same
    # visible geometry, so the easy spot marks where the visible camera sees the engine.
    identity = synth.Identity(1, shape=1, paint=1, marking=0, heat=1)
    ex, ey = hot_spot(grey(render("easy", identity, camera), "tir"))
    hx, hy = hot_spot(grey(render("hard", identity, camera), "tir"))
    tcam = synth.thermal_camera(camera, seed=0)
    dx, dy = tcam.pixel_offset(H)
    # tir = centre + scale * (visible - centre) + offset, in pixels
    want_x = W / 2 + tcam.scale * (ex - W / 2) + dx
    want_y = H / 2 + tcam.scale * (ey - H / 2) + dy
    assert abs(hx - want_x) < 1.2 and abs(hy - want_y) < 1.0, (hx, want_x, hy, want_y)
    assert np.hypot(hx - ex, hy - ey) > 3  # >= 3 pixels away from the visible position
    # offsets are 0.10-0.25 (across) and 0.04-0.12 (down) half-heights: 3.2-8 and 1.3-3.8 px
    assert 3.2 <= abs(dx) <= 8 and 1.28 <= abs(dy) <= 3.84


def test_thermal_crossover_and_glare_degrade_tir():
    identity = synth.Identity(1, shape=2, paint=1, marking=0, heat=2)
    normal = render("hard", identity)
    crossover = render("hard", identity, challenge="thermal_crossover")
    glare = render("hard", identity, challenge="glare")

    def contrast(img: np.ndarray) -> float:  # std of 4 x 4 block means (sensor noise / 4)
        return float(img.reshape(H // 4, 4, W // 4, 4).mean(axis=(1, 3)).std())

    # crossover scales TIR contrast by 0.05-0.20 around its mean
    ratio = contrast(grey(crossover, "tir")) / contrast(grey(normal, "tir"))
    assert ratio < 0.3, ratio
    # ... while RGB is only dimmed (x0.5-0.8) and keeps its structure
    assert 0.45 < grey(crossover, "rgb").mean() / grey(normal, "rgb").mean() < 0.85
    # glare adds a warm wash of 0.20-0.35 x a Gaussian blob (sigma 25-45% of the width)
    assert grey(glare, "tir").mean() - grey(normal, "tir").mean() > 0.03 * 255


def test_identity_cues_overlap_between_spectra():
    base = synth.Identity(1, shape=0, paint=0, marking=0, heat=0)  # white plain sedan

    def change(attribute: str, value: int, spectrum: str, variant: str) -> float:
        a = grey(render(variant, base), spectrum)
        b = grey(render(variant, synth.Identity(**{**base.__dict__, attribute: value})), spectrum)
        return float(np.abs(a - b).mean())

    # paint white -> black: NIR reflectance 0.72 -> 0.22 on the body, TIR 0.33 -> 0.43;
    # the easy variant keeps NIR within 0.53-0.57 whatever the paint and TIR at 0.36
    assert change("paint", 1, "nir", "hard") > 10 > change("paint", 1, "nir", "easy")
    assert change("paint", 1, "tir", "hard") > 3 > change("paint", 1, "tir", "easy")
    # markings plain -> band: +-30% of the paint in RGB (easy: 6%)
    assert change("marking", 1, "rgb", "hard") > 2 * change("marking", 1, "rgb", "easy")


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory):
    spec = SynthSpec(ids=12, cameras=3, tuples_per_id=3, height=16, width=32, variant="hard")
    out = tmp_path_factory.mktemp("hard") / "ds"
    return generate("rgbnt100", out, spec)


def test_every_test_id_has_an_attribute_value_absent_from_training(hard_dataset):
    summary = json.loads((hard_dataset.parent / "synth.json").read_text())
    attrs = {i["pid"]: i for i in summary["identities"]}

    def ids_in(folder: str) -> set[int]:
        return {int(p.name[:4]) for p in (hard_dataset / folder).glob("*.jpg")}

    train, test = ids_in("bounding_box_train"), ids_in("bounding_box_test")
    assert len(train) == len(test) == 12 and not train & test
    seen = {a: {attrs[p][a] for p in train} for a in ATTRIBUTES}
    for pid in test:
        novel = [a for a in ATTRIBUTES if attrs[pid][a] not in seen[a]]
        assert novel, attrs[pid]
    # the test-only values are written down: pickup, yellow, checker, heat pattern 5
    for pid in train:
        assert attrs[pid]["shape"] != "pickup" and attrs[pid]["paint"] != "yellow"
        assert attrs[pid]["marking"] != "checker" and attrs[pid]["heat"] != 5


def test_hard_dataset_ingests_with_the_crossover_tag(hard_dataset, tmp_path):
    ingest = pytest.importorskip("msreid.data.ingest")
    from msreid.data.schema import read_manifest

    ingest.ingest("rgbnt100", hard_dataset.parent, tmp_path / "manifest", piece_size=(32, 16))
    table = read_manifest(str(tmp_path / "manifest")).to_pydict()
    with open(hard_dataset / "challenges.csv", newline="") as f:
        tags = {row["file"]: row["challenge"] for row in csv.DictReader(f)}
    assert sorted(table["challenge"]) == sorted(tags.values())


def test_cli_variant_hard_and_bad_variant(tmp_path, capsys):
    code = cli_main(["synth", "--layout", "rgbn300", "--out", str(tmp_path / "h"), "--variant",
                     "hard", "--ids", "2", "--cameras", "2", "--tuples-per-id", "3",
                     "--height", "16", "--width", "32"])
    assert code == 0
    assert "(hard variant)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "h" / "synth.json").read_text())
    assert summary["spec"]["variant"] == "hard"
    with pytest.raises(UserError, match="variant='medium'.*easy or hard"):
        generate("rgbnt100", tmp_path / "x", SynthSpec(variant="medium"))
    assert not (tmp_path / "x").exists()


def test_challenge_shares_of_the_hard_plan():
    # Plan only: 600 ids x ~20 tuples; 12% thermal crossover, 45% normal (sd < 0.005)
    tuples, _ = synth.plan_dataset(SynthSpec(ids=300, tuples_per_id=20, variant="hard"))
    tags = [t.challenge for t in tuples]
    assert abs(tags.count("thermal_crossover") / len(tags) - 0.12) < 0.015
    assert abs(tags.count("normal") / len(tags) - 0.45) < 0.015


def test_separability_proxy_script_takes_the_variant():
    # docs/SYNTHETIC.md: python tests/test_synth_separability.py --variant hard --seed S
    script = Path(__file__).with_name("test_synth_separability.py")
    out = subprocess.run([sys.executable, str(script), "--variant", "hard", "--ids", "4"],
                         capture_output=True, text=True, timeout=120, env=dict(os.environ),
                         check=True).stdout
    rows = [line.split("|")[1:4] for line in out.splitlines()[1:]]
    assert [[c.strip() for c in r] for r in rows] == [["rgbnt100", "hard", "0"],
                                                      ["rgbn300", "hard", "0"]]
