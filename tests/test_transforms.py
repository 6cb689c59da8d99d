"""msreid.data.transforms: one random draw per tuple, shared by its spectra (pixel alignment)."""

from __future__ import annotations

import numpy as np
import torch

from msreid.data.transforms import (
    AugmentParams,
    TupleDraw,
    apply,
    augment,
    draw,
    draw_each,
    normalize,
    resize,
    stack_tuples,
)
from msreid.train.sampling import sample_rngs


def _random_batch(n=6, s=3, h=16, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, s, 3, h, w), dtype=np.uint8)


def test_identical_spectra_stay_identical_after_augmentation():
    base = _random_batch(n=8, s=1)
    batch = np.repeat(base, 3, axis=1)  # the three spectra of every tuple are the same image
    params = AugmentParams(flip_prob=0.5, pad=3, erase_prob=1.0)
    out = augment(batch, [np.random.default_rng([1, i]) for i in range(8)], params)
    assert not np.array_equal(out, batch)  # something happened
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])


def _reference(img, flip, top, left, pad, box, fill):
    """Pixel by pixel: flip, zero-pad by `pad`, crop (top, left), then erase `box`. img [3, H, W]."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    for y in range(h):
        for x in range(w):
            sy, sx = y + top - pad, x + left - pad  # position in the unpadded image
            if 0 <= sy < h and 0 <= sx < w:
                out[:, y, x] = img[:, sy, w - 1 - sx] if flip else img[:, sy, sx]
    bt, bl, bh, bw = box
    for y in range(bt, bt + bh):
        for x in range(bl, bl + bw):
            out[:, y, x] = fill
    return out


def test_flip_crop_and_erased_box_land_where_the_reference_puts_them():
    batch = _random_batch(n=3, s=2, h=7, w=5)
    params = AugmentParams(pad=2, erase_fill=(1, 2, 3))
    d = TupleDraw(flip=np.array([True, False, True]),
                  crop=np.array([[0, 4], [1, 3], [2, 2]]),
                  erase=np.array([[1, 1, 2, 3], [0, 0, 0, 0], [5, 0, 2, 5]]))
    out = apply(batch, d, params)
    for i in range(3):
        for s in range(2):
            ref = _reference(batch[i, s], d.flip[i], *d.crop[i], 2, d.erase[i], [1, 2, 3])
            assert np.array_equal(out[i, s], ref), (i, s)
    # tuple 2 is centred (crop = pad): its unerased part is just the flipped image
    assert np.array_equal(out[2, :, :, :5], batch[2, :, :, :5, ::-1])


def test_draws_are_deterministic_and_boxes_stay_inside():
    params = AugmentParams(flip_prob=0.5, pad=10, erase_prob=0.5)
    a = draw(np.random.default_rng(3), 200, (64, 32), params)
    b = draw(np.random.default_rng(3), 200, (64, 32), params)
    assert all(np.array_equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))
    assert a.crop.min() >= 0 and a.crop.max() <= 20  # offsets in [0, 2 * pad]
    erased = a.erase[a.erase[:, 2] > 0]
    assert 60 < len(erased) < 140  # ~Binomial(200, 0.5): mean 100, sd ~7
    top, left, h, w = erased.T
    assert (top >= 0).all() and (top + h <= 64).all() and (left >= 0).all() and (left + w <= 32).all()
    area = h * w / (64 * 32)  # drawn in [0.02, 0.4] of the image, up to rounding of h and w
    assert area.min() > 0.01 and area.max() < 0.45
    assert 0.3 < a.flip.mean() < 0.7


def test_no_augmentation_is_the_identity():
    batch = _random_batch()
    out = augment(batch, sample_rngs(0, 0, np.arange(6)), AugmentParams(flip_prob=0.0, pad=0))
    assert np.array_equal(out, batch)


def test_resize_and_stack():
    # a constant image stays constant under bilinear resizing
    img = np.full((2, 3, 10, 20), 77, dtype=np.uint8)
    assert np.array_equal(resize(img, (5, 8)), np.full((2, 3, 5, 8), 77, dtype=np.uint8))
    # 2x upsampling of a [0, 255] step keeps the ends; stack_tuples orders spectra as asked
    tup = {"rgb": np.full((4, 6, 3), 10, np.uint8), "nir": np.full((8, 12, 3), 20, np.uint8)}
    out = stack_tuples([tup, tup], ("nir", "rgb"), (8, 12))
    assert out.shape == (2, 2, 3, 8, 12) and out.dtype == np.uint8
    assert (out[:, 0] == 20).all() and (out[:, 1] == 10).all()


def test_normalize_by_hand():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    y = normalize(x, mean=(0.0, 0.2, 0.5), std=(1.0, 0.1, 0.25))
    # channel 0: 0/255 - 0 = 0; channel 1: (0.2 - 0.2) / 0.1 = 0; channel 2: (1 - 0.5) / 0.25 = 2
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)


def test_a_tuple_gets_the_same_augmentation_in_a_batch_of_16_or_in_two_shares_of_8():
    params = AugmentParams(flip_prob=0.5, pad=4, erase_prob=0.5)
    batch = _random_batch(n=16, s=2, h=20, w=10, seed=4)
    whole = augment(batch, sample_rngs(7, 2, np.arange(16)), params)
    first = augment(batch[:8], sample_rngs(7, 2, np.arange(8)), params)
    second = augment(batch[8:], sample_rngs(7, 2, np.arange(8, 16)), params)
    assert np.array_equal(whole, np.concatenate([first, second]))
    # tuple 11's draws are those of generator (seed 7, epoch 2, stream 1, position 11) alone
    alone = draw(np.random.default_rng([7, 2, 1, 11]), 1, (20, 10), params)
    d = draw_each(sample_rngs(7, 2, np.arange(16)), (20, 10), params)
    assert d.flip[11] == alone.flip[0] and np.array_equal(d.crop[11], alone.crop[0])
    assert np.array_equal(d.erase[11], alone.erase[0])
    assert np.array_equal(whole[11], apply(batch[11:12], alone, params)[0])
    # and the draws differ between positions and epochs (something is random)
    assert len({(bool(f), *c) for f, c in zip(d.flip, d.crop)}) > 8
    assert not np.array_equal(whole, augment(batch, sample_rngs(7, 3, np.arange(16)), params))
