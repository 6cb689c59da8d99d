"""Challenges degrade RGB strongly, NIR mildly and TIR's heat pattern not at all."""

from __future__ import annotations

import numpy as np
import pytest

from msreid.data import synth
from msreid.data.synth import TuplePlan

SPECTRA = ("rgb", "nir", "tir")


def render(challenge: str, pid: int = 1, index: int = 0) -> dict[str, np.ndarray]:
    identity = synth.Identity(pid, shape=0, paint=0, marking=1, heat=0)  # white sedan
    plan = TuplePlan(pid, camera=0, index=index, split="train", challenge=challenge)
    return {k: v.astype(float) for k, v in
            synth.render_tuple(identity, plan, SPECTRA, 64, 128, seed=0).items()}


@pytest.mark.parametrize("challenge", ["low_illumination", "black_night", "glare", "shadow"])
def test_lighting_challenges_leave_tir_untouched(challenge):
    normal, hard = render("normal"), render(challenge)
    # Same (seed, id, index): geometry and TIR noise are drawn from the same
    # streams, and lighting challenges do not touch TIR at all.
    assert np.array_equal(normal["tir"], hard["tir"])
    rgb_change = np.abs(hard["rgb"] - normal["rgb"]).mean()
    nir_change = np.abs(hard["nir"] - normal["nir"]).mean()
    assert rgb_change > 2 * nir_change > 0  # RGB hit much harder than NIR


def test_low_illumination_and_black_night_darken_rgb_much_more_than_nir():
    normal = render("normal")
    # low illumination: RGB x 0.18..0.32 (x colour cast 0.85..1.25) -> ratio < ~0.45;
    # NIR x 0.8..0.9 -> ratio in 0.75..0.95 (noise is zero-mean)
    low = render("low_illumination")
    assert low["rgb"].mean() / normal["rgb"].mean() < 0.45
    assert 0.75 < low["nir"].mean() / normal["nir"].mean() < 0.95
    # black night: RGB x 0.03..0.08 plus a street light <= 0.3 -> well under 0.4;
    # NIR x 0.6..0.75
    night = render("black_night")
    assert night["rgb"].mean() / normal["rgb"].mean() < 0.4
    assert 0.55 < night["nir"].mean() / normal["nir"].mean() < 0.8


def test_occlusion_hits_every_spectrum_and_view_change_moves_the_vehicle():
    normal, occluded, moved = render("normal"), render("occlusion"), render("view_change")
    for k in SPECTRA:
        # the occluder covers >= 10% of the columns with a flat value in every spectrum
        changed_cols = (np.abs(occluded[k] - normal[k]).max(axis=(0, 2)) > 30).mean()
        assert changed_cols >= 0.1, (k, changed_cols)
        assert np.abs(moved[k] - normal[k]).mean() > 5, k  # geometry changed everywhere


def test_identity_attributes_show_in_the_right_spectra():
    base = synth.Identity(1, shape=0, paint=0, marking=0, heat=0)
    plan = TuplePlan(1, camera=0, index=0, split="train", challenge="normal")

    def pieces(**change):
        ident = synth.Identity(**{**base.__dict__, **change})
        return {k: v.astype(float) for k, v in
                synth.render_tuple(ident, plan, SPECTRA, 64, 128, seed=0).items()}

    ref = pieces()
    # white -> blue, plain -> stripes, (engine front + exhaust) -> (engine rear)
    change = {"paint": 3, "marking": 3, "heat": 1}
    diff = {name: {k: np.abs(v - ref[k]).mean() for k, v in pieces(**{name: value}).items()}
            for name, value in change.items()}
    # paint: RGB only (white -> blue); NIR barely (0.56 -> 0.54 reflectance), TIR not at all
    # white -> blue changes the RGB channels by (0.80, 0.64, 0.18) x 255 = 138 on average
    # over the body, ~20% of the piece -> ~25
    assert diff["paint"]["rgb"] > 15 and diff["paint"]["nir"] < 5 and diff["paint"]["tir"] == 0
    # marking: NIR strongly, RGB faintly (6% modulation), TIR not at all
    assert diff["marking"]["nir"] > 3 * diff["marking"]["rgb"] and diff["marking"]["tir"] == 0
    # heat: TIR only (two hot spots of ~0.6 x 255 over ~5% of the piece each -> ~5)
    assert diff["heat"]["tir"] > 3 and diff["heat"]["rgb"] == diff["heat"]["nir"] == 0
    # shape: every spectrum
    shape = pieces(shape=3)
    assert all(np.abs(shape[k] - ref[k]).mean() > 3 for k in SPECTRA)
