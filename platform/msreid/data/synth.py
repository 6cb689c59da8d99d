"""Synthetic multi-spectral vehicle re-ID benchmark in the released on-disk layout.

Writes ``<out>/rgbir/{bounding_box_train,query,bounding_box_test}/`` with one
JPEG per spectral tuple named ``<id:04d>_c<cam:03d>_<n:05d>.jpg`` (ids 1-based,
cameras 1-based on disk), spectra side by side RGB | NIR | TIR (RGBN300: RGB |
NIR), plus ``<out>/rgbir/challenges.csv`` (``file,challenge``) that ingest
reads. The generator's model is described in ``docs/SYNTHETIC.md``:

- identity = (body shape, paint colour, NIR markings, heat pattern), each drawn
  from a SMALL palette, so ids collide on every single attribute while the
  combination is unique;
- shape is visible in every spectrum, paint only in RGB, markings in NIR (faint
  in RGB), heat spots only in TIR: no single spectrum separates every pair;
- cameras change the view (flip, scale, shift, shear, perspective, background);
- challenges degrade RGB strongly, NIR mildly and TIR's heat pattern not at all.

That default (``variant="easy"``) makes "fusion beats every single spectrum"
hold by construction: it is the plumbing benchmark. ``variant="hard"`` (the
section at the end) removes each of those guarantees: TIR from a coarser,
misaligned camera, challenges that hit TIR, cues shared between spectra, test
ids with attribute values no training id has.

Everything is deterministic per seed: each tuple draws from its own RNG seeded
by ``(seed, id, index)``, so the output does not depend on generation order.
Pure numpy + PIL; rendering is vectorised over pixels (about 1 ms per tuple).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from PIL import Image

from msreid.data.ingest import CHALLENGE_TAGS, CHALLENGES_FILE
from msreid.data.layouts import LAYOUTS
from msreid.errors import UserError, disk_full_is_user_error

SYNTH_LAYOUTS = ("rgbnt100", "rgbn300")
"""The released layouts the generator writes (spectra side by side in one JPEG)."""
LAYOUT_SPECTRA: dict[str, tuple[str, ...]] = {name: LAYOUTS[name].spectra for name in SYNTH_LAYOUTS}
SPLIT_FOLDERS: dict[str, str] = dict(LAYOUTS["rgbnt100"].folders)  # same folders in rgbn300
JPEG_QUALITY = 92
MAX_IDS_PER_SPLIT = LAYOUTS["rgbnt100"].pid_range[1] // 2  # released ids 1..600: train and test halves
MAX_CAMERAS = LAYOUTS["rgbnt100"].camera_range[1]  # released cameras are 1..8
QUERY_FRACTION = 0.2  # RGBN300: 4,985 of 24,925 gallery tuples; RGBNT100: 1,715 of 8,575

# Fig. 3 (c) of the paper shows the challenge distribution of RGBN300 without
# numbers; these are our plausible choice (documented in docs/SYNTHETIC.md), in
# the order of CHALLENGE_TAGS: normal, low_illumination, black_night, glare,
# shadow, occlusion, view_change.
CHALLENGE_WEIGHTS: dict[str, float] = dict(
    zip(CHALLENGE_TAGS, (0.55, 0.12, 0.08, 0.06, 0.08, 0.05, 0.06), strict=True))
CHALLENGES = CHALLENGE_TAGS

# Seed-sequence tags keep the RNG streams of different purposes apart.
_TAG_IDENTITY, _TAG_PLAN, _TAG_CAMERA, _TAG_CHALLENGE, _TAG_RENDER = 11, 12, 13, 14, 15
_TAG_TIR_CAMERA = 16  # hard variant: the thermal camera's misalignment

VARIANTS = ("easy", "hard")


@dataclass(frozen=True)
class SynthSpec:
    """Size and seed of a synthetic dataset (defaults: the laptop benchmark)."""

    ids: int = field(default=40, metadata={
        "help": "identities PER SPLIT (train and test get this many each, disjoint); "
                "the paper has 50 (RGBNT100) or 150 (RGBN300); at most 300"})
    cameras: int = field(default=8, metadata={
        "help": "cameras (2..8); each id is seen by 2 to all of them (6.8 of 8 on average; "
                "the paper: 6.7)"})
    tuples_per_id: int = field(default=20, metadata={
        "help": "mean tuples per identity (each id gets 0.75x to 1.25x this many); "
                "the paper averages ~170"})
    height: int = field(default=64, metadata={
        "help": "height of ONE spectrum piece in pixels (released: 128); multiple of 8"})
    width: int = field(default=128, metadata={
        "help": "width of ONE spectrum piece in pixels (released: 256); multiple of 8"})
    seed: int = field(default=0, metadata={
        "help": "RNG seed: same seed and sizes give byte-identical files"})
    variant: str = field(default="easy", metadata={
        "help": "easy: the plumbing benchmark whose fusion check holds by construction; "
                "hard: misaligned low-resolution TIR, challenges that hit TIR too, overlapping "
                "cues, test ids with attribute values unseen in training (docs/SYNTHETIC.md)"})

    def validate(self) -> None:
        """Raise ``UserError`` naming the first out-of-range field."""
        checks = [
            ("ids", 2 <= self.ids <= MAX_IDS_PER_SPLIT, f"2..{MAX_IDS_PER_SPLIT}"),
            ("cameras", 2 <= self.cameras <= MAX_CAMERAS, f"2..{MAX_CAMERAS}"),
            ("tuples_per_id", 2 <= self.tuples_per_id <= 1000, "2..1000"),
            ("height", 16 <= self.height <= 512 and self.height % 8 == 0,
             "16..512 and a multiple of 8"),
            ("width", 16 <= self.width <= 1024 and self.width % 8 == 0,
             "16..1024 and a multiple of 8"),
            ("seed", self.seed >= 0, ">= 0"),
            ("variant", self.variant in VARIANTS, " or ".join(VARIANTS)),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise UserError(f"{name}={getattr(self, name)!r} is out of range; "
                                f"use {allowed}")


def synth_spec_from_json(text: str, option: str = "--synth") -> dict[str, int | str]:
    """Validated SynthSpec overrides from a JSON object (``'{"ids": 20}'``); one UserError
    naming the option and the problem (bad JSON, not an object, unknown key, not an
    integer, out of range) otherwise. Parse it before anything is created."""
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{option} {text!r} is not valid JSON ({exc.msg} at character "
                        f"{exc.pos}); give an object such as '{{\"ids\": 20}}'") from None
    if not isinstance(overrides, dict):
        raise UserError(f"{option} {text!r}: expected a JSON object such as '{{\"ids\": 20}}', "
                        f"got a {type(overrides).__name__}")
    known = [f.name for f in fields(SynthSpec)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise UserError(f"{option}: unknown key(s) {unknown}; valid keys are {known}")
    for key, value in overrides.items():
        if key == "variant":
            if not isinstance(value, str):
                raise UserError(f"{option}: variant={json.dumps(value)} must be a string: "
                                f"{' or '.join(VARIANTS)}")
        elif isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{option}: {key}={json.dumps(value)} must be an integer")
    try:
        SynthSpec(**overrides).validate()
    except UserError as exc:
        raise UserError(f"{option}: {exc}") from None
    return dict(overrides)


# ----------------------------------------------------------------------------
# Identity palettes. Vehicle coordinates: u along the body (front = +u), v down,
# unit = half the piece height; the image spans u in [-2, 2], v in [-1, 1] for
# a 2:1 piece before the camera transform.
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """Side-view silhouette: body box, cabin trapezoid, two wheels."""

    name: str
    half_length: float  # body half length L
    body_top: float  # v of the body's top edge (the body's bottom is at v=0.42)
    cabin_center: float  # u of the cabin centre, in units of L
    cabin_half_bottom: float  # cabin half width at the body top, in units of L
    cabin_half_top: float  # cabin half width at the roof, in units of L
    roof: float  # v of the roof (== body_top: no cabin)
    wheel_radius: float
    wheel_u: float  # |u| of the wheel centres, in units of L


BODY_BOTTOM = 0.42
SHAPES: tuple[Shape, ...] = (
    Shape("sedan", 1.60, 0.00, 0.00, 0.42, 0.28, -0.48, 0.20, 0.66),
    Shape("hatchback", 1.30, 0.00, -0.12, 0.60, 0.42, -0.52, 0.19, 0.68),
    Shape("suv", 1.55, -0.18, -0.08, 0.70, 0.62, -0.72, 0.25, 0.66),
    Shape("van", 1.70, -0.78, 0.00, 0.00, 0.00, -0.78, 0.21, 0.68),
    Shape("pickup", 1.80, -0.08, 0.40, 0.26, 0.18, -0.70, 0.24, 0.66),
)
PAINTS: dict[str, tuple[float, float, float]] = {
    "white": (0.92, 0.92, 0.90),
    "black": (0.10, 0.10, 0.12),
    "red": (0.78, 0.10, 0.10),
    "blue": (0.12, 0.28, 0.72),
    "silver": (0.58, 0.60, 0.64),
    "yellow": (0.92, 0.76, 0.10),
}
# Paint barely changes NIR reflectance (uncorrelated small offsets per colour).
_PAINT_NIR = {"white": 0.56, "black": 0.53, "red": 0.55, "blue": 0.54,
              "silver": 0.55, "yellow": 0.57}
MARKINGS = ("plain", "band", "two_tone", "stripes", "door_patch", "checker")
# Heat spots: (kind, amplitude); kinds are placed per shape in _heat_spots.
HEAT_PATTERNS: tuple[tuple[tuple[str, float], ...], ...] = (
    (("engine_front", 0.60), ("exhaust", 0.50)),
    (("engine_rear", 0.70),),
    (("wheel_front", 0.50), ("wheel_rear", 0.50), ("exhaust", 0.40)),
    (("engine_front", 0.50), ("wheel_front", 0.55)),
    (("cabin", 0.45), ("exhaust", 0.55)),
    (("engine_front", 0.30), ("engine_rear", 0.30), ("wheel_rear", 0.60)),
)


@dataclass(frozen=True)
class Identity:
    """One vehicle: an index into each attribute palette."""

    pid: int
    shape: int
    paint: int
    marking: int
    heat: int


def make_identities(n_total: int, seed: int) -> list[Identity]:
    """Distinct attribute combinations for ids 1..n_total (5*6*6*6 = 1080 possible)."""
    sizes = (len(SHAPES), len(PAINTS), len(MARKINGS), len(HEAT_PATTERNS))
    rng = np.random.default_rng([seed, _TAG_IDENTITY])
    codes = rng.choice(int(np.prod(sizes)), size=n_total, replace=False)
    combos = np.stack(np.unravel_index(codes, sizes), axis=1)
    return [Identity(i + 1, *map(int, c)) for i, c in enumerate(combos)]


# ----------------------------------------------------------------------------
# The plan: which tuples exist, their split, camera, challenge; which are queries.
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TuplePlan:
    """One spectral tuple to render; ``index`` is 0-based within its id."""

    pid: int
    camera: int  # 0-based
    index: int
    split: str  # "train" or "gallery" (queries are copies of gallery files)
    challenge: str

    @property
    def file_name(self) -> str:
        return f"{self.pid:04d}_c{self.camera + 1:03d}_{self.index + 1:05d}.jpg"


def _id_tuples(pid: int, split: str, spec: SynthSpec) -> list[TuplePlan]:
    """Tuples of one id: 75-125% of tuples_per_id, seen by 2..C of the C cameras.

    Cameras per id: C - Binomial(C - 2, 0.2), i.e. 6.8 of 8 on average; the
    paper reports 2 to 8 views per vehicle, 6.7 on average.
    """
    rng = np.random.default_rng([spec.seed, _TAG_PLAN, pid])
    t = spec.tuples_per_id
    n = int(rng.integers(max(2, round(0.75 * t)), max(2, round(1.25 * t)) + 1))
    k = min(n, spec.cameras - int(rng.binomial(spec.cameras - 2, 0.2)))
    cams = np.sort(rng.choice(spec.cameras, size=k, replace=False))
    seq = np.concatenate([cams, rng.choice(cams, size=n - k)])
    rng.shuffle(seq)
    table = challenge_weights(spec.variant)
    tags, weights = tuple(table), np.array(list(table.values()))
    out = []
    for index, cam in enumerate(seq):
        crng = np.random.default_rng([spec.seed, _TAG_CHALLENGE, pid, index])
        challenge = tags[int(crng.choice(len(tags), p=weights))]
        out.append(TuplePlan(pid, int(cam), index, split, challenge))
    return out


def _pick_queries(tuples: list[TuplePlan], pid: int, seed: int) -> list[TuplePlan]:
    """~20% of an id's gallery tuples (at least one), cycling over its cameras."""
    rng = np.random.default_rng([seed, _TAG_PLAN, pid, 1])
    n_query = max(1, round(QUERY_FRACTION * len(tuples)))
    by_cam: dict[int, list[TuplePlan]] = {}
    for tp in tuples:
        by_cam.setdefault(tp.camera, []).append(tp)
    cams = list(by_cam)
    rng.shuffle(cams)
    for c in cams:
        rng.shuffle(by_cam[c])
    picked: list[TuplePlan] = []
    while len(picked) < n_query:
        for c in cams:
            if by_cam[c] and len(picked) < n_query:
                picked.append(by_cam[c].pop())
    return sorted(picked, key=lambda tp: tp.index)


def train_pids(spec: SynthSpec) -> set[int]:
    """The training ids: a seeded random half of ``1..2N`` (the rest are test ids)."""
    order = np.random.default_rng([spec.seed, _TAG_PLAN]).permutation(2 * spec.ids) + 1
    return set(int(p) for p in order[: spec.ids])


def plan_dataset(spec: SynthSpec) -> tuple[list[TuplePlan], list[TuplePlan]]:
    """(rendered tuples of train + gallery, query tuples = copies of gallery ones)."""
    n_total = 2 * spec.ids
    train_ids = train_pids(spec)
    tuples: list[TuplePlan] = []
    queries: list[TuplePlan] = []
    for pid in range(1, n_total + 1):
        split = "train" if pid in train_ids else "gallery"
        mine = _id_tuples(pid, split, spec)
        tuples += mine
        if split == "gallery":
            queries += _pick_queries(mine, pid, spec.seed)
    return tuples, queries


# ----------------------------------------------------------------------------
# Cameras and geometry.
# ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraView:
    """Per-camera view: geometry and background of each spectrum."""

    flip: bool
    scale: float
    shift: tuple[float, float]
    shear: float
    perspective: float
    bg_rgb: tuple[tuple[float, float, float], tuple[float, float, float]]  # top, bottom
    bg_nir: tuple[float, float]
    bg_tir: tuple[float, float]


def camera_view(camera: int, seed: int) -> CameraView:
    """Camera ``camera`` (0-based): odd cameras see vehicles facing the other way."""
    rng = np.random.default_rng([seed, _TAG_CAMERA, camera])
    u = rng.uniform
    return CameraView(
        flip=camera % 2 == 1,
        scale=u(0.98, 1.1),
        shift=(u(-0.10, 0.10), u(-0.04, 0.04)),
        shear=u(-0.08, 0.08),
        perspective=u(-0.06, 0.06),
        bg_rgb=(tuple(u(0.45, 0.6) + u(-0.08, 0.08, 3)), tuple(u(0.3, 0.4) + u(-0.03, 0.03, 3))),
        bg_nir=(u(0.4, 0.55), u(0.3, 0.4)),
        bg_tir=(u(0.14, 0.20), u(0.20, 0.26)),
    )


def _inverse_homography(view: CameraView, rng: np.random.Generator,
                        challenge: str) -> np.ndarray:
    """3x3 map from image coords (x, y, 1) to vehicle coords (u, v, w).

    Forward map: flip, then scale + shear, then perspective, then shift; each
    tuple jitters the camera's view a little, ``view_change`` a lot.
    """
    s = view.scale * rng.uniform(0.94, 1.06)
    sh, p = view.shear, view.perspective
    tx, ty = view.shift[0] + rng.normal(0, 0.05), view.shift[1] + rng.normal(0, 0.03)
    if challenge == "view_change":
        sign = rng.choice([-1.0, 1.0], size=2)
        s *= rng.uniform(0.70, 0.85)
        sh += sign[0] * rng.uniform(0.25, 0.40)
        p += sign[1] * rng.uniform(0.12, 0.20)
        tx += rng.uniform(-0.3, 0.3)
    flip = np.diag([-1.0 if view.flip else 1.0, 1.0, 1.0])
    scale_shear = np.array([[s, s * sh, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]])
    persp = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [p, 0.0, 1.0]])
    shift = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return np.linalg.inv(shift @ persp @ scale_shear @ flip)


def _vehicle_coords(height: int, width: int, inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vehicle coordinates (u, v) of every pixel centre, each ``[H, W]``."""
    half = height / 2.0
    # float32 halves the cost of every per-pixel op; precision is ample at these sizes.
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x = (x + 0.5 - width / 2.0) / half
    y = (y + 0.5 - half) / half
    w = inv[2, 0] * x + inv[2, 1] * y + inv[2, 2]
    u = (inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]) / w
    v = (inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]) / w
    return u.astype(np.float32), v.astype(np.float32)


def _soft(sd: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-mask from a signed distance (negative inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(sd * np.float32(1.0 / edge), -30, 30)))


def _box_sd(u: np.ndarray, v: np.ndarray, cu: float, cv: float, hu: float, hv: float,
            r: float) -> np.ndarray:
    """Signed distance to a rounded box centred at (cu, cv) with half sizes (hu, hv)."""
    qx = np.abs(u - cu) - hu + r
    qy = np.abs(v - cv) - hv + r
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - r


def shape_distances(u: np.ndarray, v: np.ndarray, shape: Shape) -> dict[str, np.ndarray]:
    """Signed distances ``[H, W]`` (negative inside) to the shell (body + cabin), glass, wheels."""
    L = shape.half_length
    body_sd = _box_sd(u, v, 0.0, (shape.body_top + BODY_BOTTOM) / 2, L,
                      (BODY_BOTTOM - shape.body_top) / 2, 0.12)
    cab_h = shape.body_top - shape.roof
    if cab_h > 0:
        t = np.clip((shape.body_top - v) / cab_h, 0, 1)  # 0 at body top, 1 at roof
        half = L * (shape.cabin_half_bottom + (shape.cabin_half_top - shape.cabin_half_bottom) * t)
        sd_x = np.abs(u - shape.cabin_center * L) - half
        cabin_sd = np.maximum(sd_x, np.maximum(shape.roof - v, v - shape.body_top - 0.05))
        glass_sd = np.maximum(sd_x + 0.12, np.maximum(shape.roof + 0.08 - v, v - shape.body_top + 0.04))
        shell_sd = np.minimum(body_sd, cabin_sd)
    else:  # van: one box with a window band
        glass_sd = _box_sd(u, v, 0.1 * L, shape.body_top + 0.22, 0.8 * L, 0.13, 0.03)
        shell_sd = body_sd
    wx, r = shape.wheel_u * L, shape.wheel_radius
    wheel_sd = np.minimum(np.hypot(u - wx, v - BODY_BOTTOM), np.hypot(u + wx, v - BODY_BOTTOM)) - r
    return {"shell": shell_sd, "glass": glass_sd, "wheels": wheel_sd}


def shape_masks(dist: dict[str, np.ndarray], edge: float) -> dict[str, np.ndarray]:
    """Soft masks ``[H, W]`` in [0, 1] from :func:`shape_distances`: shell, glass, wheels, vehicle."""
    shell, wheels = _soft(dist["shell"], edge), _soft(dist["wheels"], edge)
    # soft() is decreasing, so the union max(soft(a), soft(b)) is soft(min(a, b))
    vehicle = _soft(np.minimum(dist["shell"], dist["wheels"]), edge)
    return {"shell": shell, "glass": _soft(dist["glass"], edge) * shell, "wheels": wheels,
            "vehicle": vehicle}


def marking_field(u: np.ndarray, v: np.ndarray, shape: Shape, marking: int) -> np.ndarray:
    """Marking pattern ``[H, W]`` float32 in [-1, 1] (0 = plain paint); coarse on purpose."""
    return _marking(u, v, shape, marking).astype(np.float32, copy=False)


def _marking(u: np.ndarray, v: np.ndarray, shape: Shape, marking: int) -> np.ndarray:
    L = shape.half_length
    un = u / L
    vb = (v - shape.body_top) / (BODY_BOTTOM - shape.body_top)  # 0 top .. 1 bottom of body
    name = MARKINGS[marking]
    if name == "plain":
        return np.zeros_like(u)
    if name == "band":
        return np.where((vb > 0.35) & (vb < 0.7), 1.0, 0.0)
    if name == "two_tone":
        return np.where(un > 0.05, -1.0, 0.3)
    if name == "stripes":
        return np.tanh(3.0 * np.sin(np.pi * 2.5 * un))
    if name == "door_patch":
        return np.where((np.abs(un) < 0.35) & (vb > 0.1) & (vb < 0.9), 1.0, -0.2)
    # checker: 3 x 2 cells over the body
    return np.tanh(3.0 * np.sin(np.pi * 1.5 * un) * np.sin(np.pi * (vb - 0.5)))


def _heat_spots(shape: Shape, heat: int) -> list[tuple[float, float, float, float]]:
    """Hot spots ``(u, v, sigma, amplitude)`` of heat pattern ``heat`` on ``shape``."""
    L = shape.half_length
    mid = (shape.body_top + BODY_BOTTOM) / 2
    cabin_v = (shape.roof + shape.body_top) / 2 if shape.roof < shape.body_top \
        else shape.body_top + 0.22
    where = {
        "engine_front": (0.72 * L, mid, 0.30),
        "engine_rear": (-0.72 * L, mid, 0.30),
        "exhaust": (-0.98 * L, BODY_BOTTOM - 0.04, 0.13),
        "wheel_front": (shape.wheel_u * L, BODY_BOTTOM, 0.9 * shape.wheel_radius),
        "wheel_rear": (-shape.wheel_u * L, BODY_BOTTOM, 0.9 * shape.wheel_radius),
        "cabin": (shape.cabin_center * L, cabin_v, 0.35),
    }
    return [(*where[kind], amp) for kind, amp in HEAT_PATTERNS[heat]]


# ----------------------------------------------------------------------------
# Rendering: each spectrum as float images in [0, 1].
# ----------------------------------------------------------------------------

def _gradient(height: int, width: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Vertical background gradient ``[H, W, C]`` from ``top`` to ``bottom`` (each ``[C]``)."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    img = (1 - t) * top[None, None, :] + t * bottom[None, None, :]
    return np.broadcast_to(img, (height, width, img.shape[2])).copy()


def _layer(img: np.ndarray, mask: np.ndarray, value: np.ndarray | float) -> np.ndarray:
    """Alpha-composite ``value`` over ``img`` ``[H, W, C]`` with ``mask`` ``[H, W]``."""
    m = mask[..., None]
    return img * (1 - m) + np.asarray(value, np.float32) * m


def render_rgb(u: np.ndarray, v: np.ndarray, masks: dict[str, np.ndarray], identity: Identity,
               view: CameraView, rng: np.random.Generator, marking_gain: float = 0.06) -> np.ndarray:
    """RGB piece ``[H, W, 3]``: paint colour, markings (faint by default), glass, tyres."""
    shape = SHAPES[identity.shape]
    h, w = u.shape
    img = _gradient(h, w, np.array(view.bg_rgb[0]), np.array(view.bg_rgb[1]))
    img += rng.uniform(-0.08, 0.08, size=3).astype(np.float32)  # per-tuple background change
    paint = np.array(list(PAINTS.values())[identity.paint], np.float32)
    shade = 1.1 - 0.3 * np.clip((v - shape.roof) / (BODY_BOTTOM - shape.roof), 0, 1)
    mark = marking_field(u, v, shape, identity.marking)
    body = paint[None, None, :] * (shade * (1 + marking_gain * mark))[..., None]
    img = img * (1 - masks["shell"][..., None]) + body * masks["shell"][..., None]
    img = _layer(img, masks["glass"], np.array([0.14, 0.17, 0.22]))
    img = _layer(img, masks["wheels"], np.array([0.07, 0.07, 0.08]))
    return img * (rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, size=3)).astype(np.float32)


def render_nir(u: np.ndarray, v: np.ndarray, masks: dict[str, np.ndarray], identity: Identity,
               view: CameraView, rng: np.random.Generator,
               paint_nir: dict[str, float] | None = None) -> np.ndarray:
    """NIR piece ``[H, W, 1]``: paint reflectance (near-uniform by default), strong markings."""
    shape = SHAPES[identity.shape]
    h, w = u.shape
    img = _gradient(h, w, np.array([view.bg_nir[0]]), np.array([view.bg_nir[1]]))
    img += rng.uniform(-0.08, 0.08)
    refl = (paint_nir or _PAINT_NIR)[list(PAINTS)[identity.paint]]
    body = refl + 0.28 * marking_field(u, v, shape, identity.marking)
    img = img * (1 - masks["shell"][..., None]) + body[..., None] * masks["shell"][..., None]
    img = _layer(img, masks["glass"], 0.18)
    img = _layer(img, masks["wheels"], 0.12)
    return img * rng.uniform(0.92, 1.08)


def render_tir(u: np.ndarray, v: np.ndarray, masks: dict[str, np.ndarray], identity: Identity,
               view: CameraView, rng: np.random.Generator,
               levels: tuple[float, float] = (0.36, 0.31), heat_gain: float = 1.0) -> np.ndarray:
    """TIR piece ``[H, W, 1]``: smooth warm body and glass (``levels``) plus the hot spots."""
    h, w = u.shape
    img = _gradient(h, w, np.array([view.bg_tir[0]]), np.array([view.bg_tir[1]]))
    img += rng.uniform(-0.04, 0.04)
    img = _layer(img, masks["vehicle"], levels[0])
    img = _layer(img, masks["glass"], levels[1])
    heat = np.zeros_like(u)
    for cu, cv, sigma, amp in _heat_spots(SHAPES[identity.shape], identity.heat):
        heat += amp * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma ** 2))
    img = img + (heat * masks["vehicle"])[..., None] * (heat_gain * rng.uniform(0.9, 1.1))
    return img + rng.uniform(-0.03, 0.03)


# ----------------------------------------------------------------------------
# Challenges: degrade RGB strongly, NIR mildly, TIR's heat pattern not at all.
# Occlusion hits every spectrum; view_change is geometric (_inverse_homography).
# ----------------------------------------------------------------------------

def _glare_blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Large Gaussian light blob ``[H, W]`` in [0, 1] at a random place."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h * 0.6)
    sigma = rng.uniform(0.25, 0.45) * w
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))


def _shadow_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Soft half-plane ``[H, W]`` (1 = in shadow) through a random point."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    d = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    return 1.0 / (1.0 + np.exp(-d / 2.0))


def _occluder(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Hard mask ``[H, W]`` of an occluder: a pole or another vehicle from one side."""
    mask = np.zeros((h, w), np.float32)
    if rng.random() < 0.5:  # pole
        x0 = int(rng.uniform(0.2, 0.7) * w)
        mask[:, x0: x0 + max(2, int(rng.uniform(0.10, 0.18) * w))] = 1.0
    else:  # another vehicle or a wall entering from the left or the right
        cover = int(rng.uniform(0.25, 0.40) * w)
        top = int(rng.uniform(0.0, 0.4) * h)
        if rng.random() < 0.5:
            mask[top:, :cover] = 1.0
        else:
            mask[top:, w - cover:] = 1.0
    return mask


def apply_challenge(pieces: dict[str, np.ndarray], challenge: str,
                    rng: np.random.Generator) -> dict[str, float]:
    """Degrade ``pieces`` (``[H, W, C]`` floats) in place; return extra noise sigma per spectrum."""
    rgb, nir = pieces.get("rgb"), pieces.get("nir")
    h, w = rgb.shape[:2]
    noise = {"rgb": 0.0, "nir": 0.0, "tir": 0.0}
    if challenge == "low_illumination":
        rgb *= (rng.uniform(0.18, 0.32) * np.array([0.85, 0.95, 1.25])).astype(np.float32)
        nir *= rng.uniform(0.8, 0.9)
        noise.update(rgb=0.035, nir=0.01)
    elif challenge == "black_night":
        rgb *= rng.uniform(0.03, 0.08)
        rgb += _glare_blob(h, w, rng)[..., None] * rng.uniform(0.1, 0.3)  # street light
        nir *= rng.uniform(0.6, 0.75)
        noise.update(rgb=0.03, nir=0.02)
    elif challenge == "glare":
        blob = _glare_blob(h, w, rng)
        a = np.clip(rng.uniform(0.35, 0.55) + 0.6 * blob, 0, 1)[..., None]
        rgb[:] = rgb * (1 - a) + a * np.array([1.0, 0.97, 0.9], np.float32)
        nir[:] = nir * (1 - 0.25 * blob[..., None]) + 0.25 * blob[..., None]
    elif challenge == "shadow":
        m = _shadow_mask(h, w, rng)[..., None]
        rgb *= 1 - rng.uniform(0.6, 0.8) * m
        nir *= 1 - rng.uniform(0.15, 0.3) * m
    elif challenge == "occlusion":
        m = _occluder(h, w, rng)[..., None]
        values = {"rgb": rng.uniform(0.1, 0.7, 3).astype(np.float32), "nir": rng.uniform(0.2, 0.6),
                  "tir": rng.uniform(0.18, 0.3)}
        for name, img in pieces.items():
            img[:] = img * (1 - m) + values[name] * m
    return noise


def render_tuple(identity: Identity, plan: TuplePlan, spectra: tuple[str, ...],
                 height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """One spectral tuple: ``{spectrum: uint8 [H, W, 3]}`` (NIR/TIR grey replicated).

    Independent RNG streams per purpose, all derived from (seed, id, index), so a
    tuple's pixels do not depend on generation order or on the other spectra.
    """
    rngs = [np.random.default_rng([seed, _TAG_RENDER, plan.pid, plan.index, k])
            for k in range(6)]
    view = camera_view(plan.camera, seed)
    inv = _inverse_homography(view, rngs[0], plan.challenge)
    u, v = _vehicle_coords(height, width, inv)
    edge = 1.5 / height  # about 0.75 pixel in vehicle units at scale 1
    dist = shape_distances(u, v, SHAPES[identity.shape])
    masks = shape_masks(dist, edge)
    renderers = {"rgb": render_rgb, "nir": render_nir, "tir": render_tir}
    pieces = {}
    for k, name in enumerate(spectra):
        # TIR is blurry: softer silhouette edges, no texture.
        m = shape_masks(dist, 4 * edge) if name == "tir" else masks
        pieces[name] = renderers[name](u, v, m, identity, view, rngs[1 + k])
    extra = apply_challenge(pieces, plan.challenge, rngs[4])
    base = {"rgb": 0.02, "nir": 0.02, "tir": 0.012}
    return _to_uint8(pieces, spectra, {k: base[k] + extra[k] for k in spectra}, rngs[5])


def _to_uint8(pieces: dict[str, np.ndarray], spectra: tuple[str, ...], sigma: dict[str, float],
              rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Add sensor noise (``sigma`` per spectrum) and quantise: ``{spectrum: uint8 [H, W, 3]}``."""
    out = {}
    for name in spectra:
        img = pieces[name]
        img = img + sigma[name] * rng.standard_normal(img.shape, dtype=np.float32)
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        out[name] = img if img.shape[2] == 3 else np.repeat(img, 3, axis=2)
    return out


# ----------------------------------------------------------------------------
# The hard variant (``SynthSpec.variant == "hard"``): nothing in it is built to
# make fusion win. The thermal camera is a separate, coarser sensor beside the
# visible one (the released rigs pair 1920x1080 visible with 640x480 thermal),
# challenges degrade TIR too, attribute cues are shared between spectra, and
# every test id carries an attribute value no training id has.
# ----------------------------------------------------------------------------

HARD_CHALLENGE_WEIGHTS: dict[str, float] = {
    "normal": 0.45,
    "low_illumination": 0.10,
    "black_night": 0.07,
    "glare": 0.08,
    "shadow": 0.07,
    "occlusion": 0.05,
    "view_change": 0.06,
    "thermal_crossover": 0.12,  # dawn/dusk: body and background at the same temperature
}
# One value per attribute that only test ids have (indices into SHAPES, PAINTS,
# MARKINGS, HEAT_PATTERNS): pickup, yellow, checker, the last heat pattern.
HELD_OUT: dict[str, int] = {"shape": 4, "paint": 5, "marking": 5, "heat": 5}
TIR_DOWNSCALE = 3  # 1920 / 640: the thermal sensor has a third of the visible pixels per axis
HARD_RGB_MARKING = 0.30  # markings modulate RGB paint by +-30% (easy: 6%)
# NIR reflectance follows the paint's brightness (dark paints absorb NIR too).
HARD_PAINT_NIR = {"white": 0.72, "black": 0.22, "red": 0.62, "blue": 0.34,
                  "silver": 0.60, "yellow": 0.68}
# TIR body level: dark paints warm up more in the sun; metallic silver has a
# low emissivity and mirrors the cold sky.
HARD_PAINT_TIR = {"white": 0.33, "black": 0.43, "red": 0.38, "blue": 0.40,
                  "silver": 0.28, "yellow": 0.34}


def challenge_weights(variant: str) -> dict[str, float]:
    """Challenge tag -> share of tuples for ``variant``."""
    return HARD_CHALLENGE_WEIGHTS if variant == "hard" else CHALLENGE_WEIGHTS


def make_identities_hard(spec: SynthSpec) -> list[Identity]:
    """Ids 1..2N: training ids use only non-held-out values; every test id has >= 1 held-out value.

    4 x 5 x 5 x 5 = 500 combinations for training, 1080 - 500 = 580 for test.
    """
    sizes = (len(SHAPES), len(PAINTS), len(MARKINGS), len(HEAT_PATTERNS))
    combos = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
    novel = (combos == np.array([HELD_OUT[k] for k in ("shape", "paint", "marking", "heat")])).any(1)
    rng = np.random.default_rng([spec.seed, _TAG_IDENTITY, 1])
    pools = {True: list(rng.permutation(np.flatnonzero(~novel))[: spec.ids]),
             False: list(rng.permutation(np.flatnonzero(novel))[: spec.ids])}
    train = train_pids(spec)
    out = []
    for pid in range(1, 2 * spec.ids + 1):
        code = pools[pid in train].pop(0)
        out.append(Identity(pid, *map(int, combos[code])))
    return out


@dataclass(frozen=True)
class ThermalCamera:
    """Where the thermal sensor sees what the visible one sees: ``tir = scale * vis + offset``.

    Coordinates are centred on the piece, in units of half the piece height.
    """

    scale: float
    offset: tuple[float, float]  # (right, down)

    def pixel_offset(self, height: int) -> tuple[float, float]:
        """The offset in pixels of a piece ``height`` high."""
        return self.offset[0] * height / 2, self.offset[1] * height / 2


def thermal_camera(camera: int, seed: int) -> ThermalCamera:
    """Camera ``camera`` (0-based): scale 0.80-1.05, offset 0.10-0.25 across, 0.04-0.12 down."""
    rng = np.random.default_rng([seed, _TAG_TIR_CAMERA, camera])
    scale = rng.uniform(0.80, 1.05)
    sign = rng.choice([-1.0, 1.0], size=2)
    return ThermalCamera(float(scale), (float(sign[0] * rng.uniform(0.10, 0.25)),
                                        float(sign[1] * rng.uniform(0.04, 0.12))))


def render_tir_hard(identity: Identity, view: CameraView, inv: np.ndarray, height: int, width: int,
                    tcam: ThermalCamera, rng: np.random.Generator,
                    rng_sensor: np.random.Generator) -> np.ndarray:
    """TIR piece ``[H, W, 1]`` seen by the thermal camera: rendered at 1/3 resolution, upsampled.

    The engine state varies per tuple (heat spots x0.3-1.1: a parked car is cold).
    """
    h_lo = max(4, height // TIR_DOWNSCALE)
    w_lo = max(4, round(h_lo * width / height))
    s, (ox, oy) = tcam.scale, tcam.offset
    tir_to_visible = np.array([[1 / s, 0.0, -ox / s], [0.0, 1 / s, -oy / s], [0.0, 0.0, 1.0]])
    u, v = _vehicle_coords(h_lo, w_lo, inv @ tir_to_visible)
    masks = shape_masks(shape_distances(u, v, SHAPES[identity.shape]), 1.5 / h_lo)
    body = HARD_PAINT_TIR[list(PAINTS)[identity.paint]]
    img = render_tir(u, v, masks, identity, view, rng, (body, body - 0.06),
                     heat_gain=rng_sensor.uniform(0.3, 1.1))[..., 0]
    img = img + 0.02 * rng_sensor.standard_normal(img.shape, dtype=np.float32)  # sensor noise
    big = Image.fromarray(img.astype(np.float32)).resize((width, height), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32)[..., None].copy()


def to_thermal_frame(mask: np.ndarray, tcam: ThermalCamera) -> np.ndarray:
    """A visible-frame mask ``[H, W]`` resampled (nearest) into the thermal camera's frame."""
    height, width = mask.shape
    half = height / 2
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    xv = np.rint((x + 0.5 - width / 2 - tcam.offset[0] * half) / tcam.scale + width / 2 - 0.5)
    yv = np.rint((y + 0.5 - half - tcam.offset[1] * half) / tcam.scale + half - 0.5)
    ok = (xv >= 0) & (xv < width) & (yv >= 0) & (yv < height)
    out = np.zeros_like(mask)
    out[ok] = mask[yv[ok].astype(int), xv[ok].astype(int)]
    return out


def _visible_challenge_hard(pieces: dict[str, np.ndarray], challenge: str,
                            rng: np.random.Generator) -> tuple[dict[str, float], np.ndarray | None]:
    """Degrade RGB and NIR in place; return (extra noise sigma, the occluder mask or None)."""
    rgb, nir = pieces["rgb"], pieces["nir"]
    noise = {"rgb": 0.0, "nir": 0.0, "tir": 0.0}
    if challenge == "occlusion":
        m = _occluder(*rgb.shape[:2], rng)
        rgb[:] = rgb * (1 - m[..., None]) + rng.uniform(0.1, 0.7, 3).astype(np.float32) * m[..., None]
        nir[:] = nir * (1 - m[..., None]) + rng.uniform(0.2, 0.6) * m[..., None]
        return noise, m
    if challenge == "thermal_crossover":  # dawn / dusk: dim, but far from night
        rgb *= rng.uniform(0.5, 0.8)
        nir *= rng.uniform(0.85, 0.95)
        noise.update(rgb=0.01)
        return noise, None
    return apply_challenge(pieces, challenge, rng), None


def _tir_challenge_hard(tir: np.ndarray, challenge: str, rng: np.random.Generator,
                        occluder: np.ndarray | None) -> float:
    """Degrade the TIR piece ``[H, W, 1]`` in place (thermal frame); return extra noise sigma."""
    if challenge == "thermal_crossover":  # contrast x0.05-0.20 around the mean level
        mean = tir.mean()
        tir[:] = mean + rng.uniform(0.05, 0.20) * (tir - mean)
        return 0.01
    if challenge == "glare":  # sun reflected off glass and paint: a warm wash over the scene
        tir += rng.uniform(0.20, 0.35) * _glare_blob(*tir.shape[:2], rng)[..., None]
    elif challenge == "occlusion" and occluder is not None:  # the same occluder, misaligned
        tir[:] = tir * (1 - occluder[..., None]) + rng.uniform(0.18, 0.3) * occluder[..., None]
    return 0.0


def render_tuple_hard(identity: Identity, plan: TuplePlan, spectra: tuple[str, ...],
                      height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """One tuple of the hard variant: ``{spectrum: uint8 [H, W, 3]}``.

    RGB and NIR share the visible camera's geometry (drawn from the same RNG
    stream as :func:`render_tuple`); TIR is seen by :func:`thermal_camera`.
    """
    rngs = [np.random.default_rng([seed, _TAG_RENDER, plan.pid, plan.index, k]) for k in range(8)]
    view = camera_view(plan.camera, seed)
    inv = _inverse_homography(view, rngs[0], plan.challenge)
    u, v = _vehicle_coords(height, width, inv)
    masks = shape_masks(shape_distances(u, v, SHAPES[identity.shape]), 1.5 / height)
    pieces = {"rgb": render_rgb(u, v, masks, identity, view, rngs[1], HARD_RGB_MARKING),
              "nir": render_nir(u, v, masks, identity, view, rngs[2], HARD_PAINT_NIR)}
    noise, occluder = _visible_challenge_hard(pieces, plan.challenge, rngs[4])
    if "tir" in spectra:
        tcam = thermal_camera(plan.camera, seed)
        pieces["tir"] = render_tir_hard(identity, view, inv, height, width, tcam, rngs[3], rngs[6])
        occluder = None if occluder is None else to_thermal_frame(occluder, tcam)
        noise["tir"] = _tir_challenge_hard(pieces["tir"], plan.challenge, rngs[7], occluder)
    base = {"rgb": 0.02, "nir": 0.02, "tir": 0.008}
    return _to_uint8(pieces, spectra, {k: base[k] + noise[k] for k in spectra}, rngs[5])


def hard_summary(spec: SynthSpec) -> dict:
    """What ``synth.json`` records about the hard variant: held-out values, thermal cameras."""
    palettes = {"shape": [s.name for s in SHAPES], "paint": list(PAINTS), "marking": list(MARKINGS),
                "heat": list(range(len(HEAT_PATTERNS)))}
    cams = []
    for camera in range(spec.cameras):
        tcam = thermal_camera(camera, spec.seed)
        dx, dy = tcam.pixel_offset(spec.height)
        cams.append({"camera": camera + 1, "scale": round(tcam.scale, 4),
                     "offset_px": [round(dx, 2), round(dy, 2)]})
    h_lo = max(4, spec.height // TIR_DOWNSCALE)
    return {"test_only_values": {k: palettes[k][i] for k, i in HELD_OUT.items()},
            "tir_sensor_size": [round(h_lo * spec.width / spec.height), h_lo],
            "thermal_cameras": cams}


# ----------------------------------------------------------------------------
# Writing the released layout.
# ----------------------------------------------------------------------------

def _save_jpeg(pieces: dict[str, np.ndarray], spectra: tuple[str, ...], path: Path) -> None:
    """Concatenate the pieces side by side (RGB | NIR | TIR) and save one JPEG."""
    image = np.concatenate([pieces[name] for name in spectra], axis=1)
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


@dataclass
class _Written:
    """What ``_write_tree`` wrote so far: images of ``total``, and their bytes."""

    total: int = 0
    images: int = 0
    bytes: int = 0

    def add(self, path: Path) -> None:
        self.images += 1
        self.bytes += path.stat().st_size

    def estimate(self) -> int | None:
        """Bytes the whole dataset needs, extrapolated from the images written (None: none yet)."""
        return round(self.bytes / self.images * self.total) if self.images else None


def _write_tree(root: Path, layout: str, spec: SynthSpec, written: _Written | None = None) -> dict:
    """Render every tuple under ``root`` (the ``rgbir`` folder); return a summary.

    ``written`` counts the images and bytes as they are written (to estimate a full disk's need).
    """
    written = written or _Written()
    spectra = LAYOUT_SPECTRA[layout]
    hard = spec.variant == "hard"
    identities = make_identities_hard(spec) if hard else make_identities(2 * spec.ids, spec.seed)
    tuples, queries = plan_dataset(spec)
    written.total = len(tuples) + len(queries)
    for folder in SPLIT_FOLDERS.values():
        (root / folder).mkdir(parents=True)
    rows = []
    for tp in tuples:
        rel = f"{SPLIT_FOLDERS[tp.split]}/{tp.file_name}"
        render = render_tuple_hard if hard else render_tuple
        pieces = render(identities[tp.pid - 1], tp, spectra, spec.height, spec.width, spec.seed)
        _save_jpeg(pieces, spectra, root / rel)
        written.add(root / rel)
        rows.append((rel, tp.challenge))
    for tp in queries:  # the release draws query from the gallery: exact copies
        rel = f"{SPLIT_FOLDERS['query']}/{tp.file_name}"
        shutil.copyfile(root / SPLIT_FOLDERS["gallery"] / tp.file_name, root / rel)
        written.add(root / rel)
        rows.append((rel, tp.challenge))
    rows.sort()
    with open(root / CHALLENGES_FILE, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", "challenge"])
        writer.writerows(rows)
    counts = {"train": sum(tp.split == "train" for tp in tuples),
              "gallery": sum(tp.split == "gallery" for tp in tuples),
              "query": len(queries)}
    extra = hard_summary(spec) if hard else {}
    return {"layout": layout, "spectra": list(spectra), "spec": asdict(spec),
            "tuples": counts, "challenge_weights": challenge_weights(spec.variant), **extra,
            "identities": [asdict(i) | {"shape": SHAPES[i.shape].name,
                                        "paint": list(PAINTS)[i.paint],
                                        "marking": MARKINGS[i.marking]}
                           for i in identities]}


SUMMARY_FILE = "synth.json"


def foreign_entries(out: Path) -> list[str]:
    """Entries under ``out`` that ``generate`` does not write, sorted (``[]``: ours or empty).

    A previous output is exactly ``synth.json`` (JSON with ``layout`` and
    ``spec``) and ``rgbir/`` holding ``challenges.csv`` and the three split
    folders of ``.jpg`` files; no symlinks anywhere.
    """
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name == SUMMARY_FILE and entry.is_file() and not entry.is_symlink():
            try:
                summary = json.loads(entry.read_text())
                ok = isinstance(summary, dict) and {"layout", "spec"} <= set(summary)
            except (ValueError, OSError):
                ok = False
            foreign += [] if ok else [f"{SUMMARY_FILE} (not written by msreid synth)"]
        elif entry.name == "rgbir" and entry.is_dir() and not entry.is_symlink():
            foreign += _foreign_in_tree(entry)
        else:
            foreign.append(entry.name)
    return foreign


def _foreign_in_tree(root: Path) -> list[str]:
    foreign = []
    for entry in sorted(root.iterdir()):
        rel = f"{root.name}/{entry.name}"
        if entry.is_symlink():
            foreign.append(rel)
        elif entry.name == CHALLENGES_FILE and entry.is_file():
            continue
        elif entry.name in SPLIT_FOLDERS.values() and entry.is_dir():
            foreign += [f"{rel}/{f.name}" for f in sorted(entry.iterdir())
                        if f.is_symlink() or not f.is_file() or f.suffix != ".jpg"]
        else:
            foreign.append(rel)
    return foreign


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file, a folder of other files, or a previous output unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    foreign = foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--out {out} holds files that msreid synth did not write ({shown}); "
                        "synth only replaces its own previous output; choose a new or empty "
                        "directory")
    if not overwrite:
        raise UserError(f"--out {out} holds a previous synthetic dataset; "
                        "pass --overwrite to replace it or choose another directory")


def _write_dataset(out: Path, layout: str, spec: SynthSpec, overwrite: bool,
                   written: _Written) -> None:
    """Render into a temporary sibling of ``out``, then rename it into place (old content swapped
    out only at the end); the temporary folder is removed on any error."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.synth-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the dataset is a normal folder
    try:
        summary = _write_tree(tmp / "rgbir", layout, spec, written)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        old = None
        _check_out(out, overwrite)  # again: the folder may have changed while we rendered
        if out.exists():
            old = out.parent / f"{tmp.name}.old"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def generate(layout: str, out: str | Path, spec: SynthSpec = SynthSpec(),
             overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the released layout; return its root ``<out>/rgbir``.

    Everything is written to a temporary sibling of ``out`` and renamed into
    place at the end, so ``out`` is either absent, the old content (on error)
    or complete. ``<out>/synth.json`` records the spec, counts and identities.
    """
    if layout not in LAYOUT_SPECTRA:
        raise UserError(f"unknown layout {layout!r}; choose one of "
                        f"{', '.join(sorted(LAYOUT_SPECTRA))}")
    spec.validate()
    out = Path(out).absolute().resolve()  # a symlinked --out: replace the folder it points to
    _check_out(out, overwrite)
    written = _Written()
    advice = (f"{out} is unchanged and the partial dataset was removed; free space there or give "
              "an --out on a disk with room (`df -h` lists them)")
    with disk_full_is_user_error(out, "the synthetic dataset", advice, needed=written.estimate):
        _write_dataset(out, layout, spec, overwrite, written)
    return out / "rgbir"
