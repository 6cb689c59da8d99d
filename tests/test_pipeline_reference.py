"""The training batches the pipeline yields, pixel for pixel, against a slow reference.

The reference does what docs/TRAINING.md describes with plain PIL, one tuple at a time:
decode the tuple's JPEG, cut each spectrum's box, resize it (bilinear, antialiased: the one
step done with torch, one piece at a time), then the tuple's augmentation drawn from its own
generator (``sample_rngs``: seed, epoch, position in the epoch's plan): mirror, a zero border
of ``pad`` pixels, the crop at the drawn offset, the erased box painted with the fill. No
code of msreid's decode or augmentation path is used, so any speed-up of that path that
changes a pixel, or a random draw, fails here (issue 22: the README's benchmark tables rest
on these batches).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from msreid.data.schema import read_manifest
from msreid.data.transforms import AugmentParams, draw
from msreid.train.sampling import epoch_plan, split_rows

SPECTRA = ("rgb", "nir", "tir")


def reference_piece(blob: bytes, box, size) -> Image.Image:
    """One spectrum of one tuple: decoded, cut out and resized to ``size`` (H, W)."""
    piece = Image.open(io.BytesIO(blob)).convert("RGB").crop(tuple(int(v) for v in box))
    if piece.size == (size[1], size[0]):
        return piece
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(piece).transpose(2, 0, 1).copy()).float()[None]
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return Image.fromarray(y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy())


def reference_tuple(row: dict, spectra, size, params: AugmentParams | None,
                    rng: np.random.Generator | None) -> np.ndarray:
    """uint8 ``[S, 3, H, W]`` of one manifest row, augmented from ``rng`` (one draw per tuple)."""
    pieces = [reference_piece(row["blobs"][row[f"{s}_src"]], row[f"{s}_box"], size)
              for s in spectra]
    if params is not None:
        d = draw(rng, 1, size, params)
        top, left = (int(v) for v in d.crop[0])
        etop, eleft, eh, ew = (int(v) for v in d.erase[0])
        out = []
        for img in pieces:
            if d.flip[0]:
                img = ImageOps.mirror(img)
            img = ImageOps.expand(img, border=params.pad, fill=(0, 0, 0))
            img = img.crop((left, top, left + size[1], top + size[0]))
            if eh > 0:
                ImageDraw.Draw(img).rectangle((eleft, etop, eleft + ew - 1, etop + eh - 1),
                                              fill=tuple(params.erase_fill))
            out.append(img)
        pieces = out
    return np.stack([np.asarray(p).transpose(2, 0, 1) for p in pieces])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    from msreid.data.ingest import ingest
    from msreid.data.synth import SynthSpec, generate

    base = tmp_path_factory.mktemp("reference_data")
    root = generate("rgbnt100", base / "synth",
                    SynthSpec(ids=5, cameras=3, tuples_per_id=5, height=48, width=96, seed=4))
    ingest("rgbnt100", root, base / "manifest", piece_size="auto")
    return str(base / "manifest")


@pytest.mark.ray
@pytest.mark.timeout(180)
@pytest.mark.parametrize("size, params, per_task, decoder", [
    ((48, 96), AugmentParams(flip_prob=0.5, pad=10, erase_prob=0.5), 3, "pil"),  # at size
    ((48, 96), AugmentParams(flip_prob=0.5, pad=10, erase_prob=0.5), 3, "torchvision"),
    ((48, 96), AugmentParams(flip_prob=0.5, pad=10, erase_prob=0.0), 8, "pil"),  # the paper's
    ((32, 64), AugmentParams(flip_prob=0.5, pad=4, erase_prob=0.7, erase_fill=(1, 2, 3)), 2,
     "pil"),
    ((32, 64), AugmentParams(flip_prob=0.5, pad=4, erase_prob=0.7), 2, "torchvision"),
    ((48, 96), AugmentParams(flip_prob=1.0, pad=60, erase_prob=0.0), 4, "pil"),  # pad > height
])
def test_training_batches_equal_the_reference(ray_session, manifest, size, params, per_task,
                                              decoder):
    from msreid.train.pipeline import DecodeSpec, load_manifest, train_dataset
    from msreid.train.sampling import sample_rngs

    index, meta = load_manifest(manifest)
    rows = split_rows(meta.split, meta.pid, meta.camera, val_ids=0, per_camera=1, seed=0)
    batch, seed = 6, 5
    plans = [epoch_plan(rows.train_labels, mode="uniform", batch_size=batch, p=0, k=0,
                        seed=seed, epoch=e) for e in range(2)]
    pos = np.concatenate(plans)
    epochs = np.concatenate([np.full(len(p), e) for e, p in enumerate(plans)])
    steps = np.concatenate([np.arange(len(p)) for p in plans])
    spec = DecodeSpec(index, SPECTRA, size, params, seed, decoder=decoder)
    ds = train_dataset(spec, rows.train[pos], rows.train_labels[pos], epochs, steps,
                       steps * batch, batches_per_task=per_task)
    table = read_manifest(manifest).to_pylist()
    seen = 0
    for i, b in enumerate(ds.iter_torch_batches(batch_size=1)):
        e, s = int(b["epoch"][0]), int(b["step"][0])
        assert (e, s) == (epochs[i], steps[i])  # plan order
        plan_rows = rows.train[pos[i]]
        rngs = sample_rngs(seed, e, s * batch + np.arange(batch))
        want = np.stack([reference_tuple(table[r], SPECTRA, size, params, g)
                         for r, g in zip(plan_rows, rngs)])
        for j, name in enumerate(SPECTRA):
            got = b[name][0]
            assert got.dtype.is_floating_point is False and got.is_contiguous()
            assert np.array_equal(got.numpy(), want[:, j]), (i, name)
        seen += 1
    assert seen == len(pos)


@pytest.mark.ray
@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [(48, 96), (32, 64)])
def test_eval_tuples_equal_the_reference(ray_session, manifest, size):
    from msreid.train.pipeline import DecodeSpec, eval_dataset, load_manifest

    index, _ = load_manifest(manifest)
    rows = np.array([7, 0, 3, 30, 12, 5, 19])
    spec = DecodeSpec(index, ("tir", "rgb"), size, None)
    table = read_manifest(manifest).to_pylist()
    got = [b for b in eval_dataset(spec, rows, batch_size=3).iter_batches(batch_size=1)]
    assert [int(b["rows"][0]) for b in got] == rows.tolist()
    for r, b in zip(rows, got):
        want = reference_tuple(table[r], ("tir", "rgb"), size, None, None)
        assert np.array_equal(b["tir"][0], want[0]) and np.array_equal(b["rgb"][0], want[1])


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_decode_spectra_equals_pil_on_other_encodings(decoder):
    """Grey, 4:4:4, 4:2:2, progressive and CMYK JPEGs, a PNG and a grey PNG decode as PIL's
    RGB conversion does, with either decoder, from bytes or a read-only numpy view."""
    from msreid.data.decode import decode_spectra

    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, size=(40, 90, 3), dtype=np.uint8))
    ramp = np.add.outer(np.arange(40), np.arange(90))[..., None] * np.array([2.0, 1.0, 0.5])
    smooth = Image.fromarray(np.clip(ramp, 0, 255).astype(np.uint8))
    blobs = []
    for rgb in (noise, smooth):
        blobs += [_jpeg(rgb, format="JPEG", quality=90),
                  _jpeg(rgb.convert("L"), format="JPEG", quality=85),
                  _jpeg(rgb, format="JPEG", quality=95, subsampling=0),
                  _jpeg(rgb, format="JPEG", quality=75, subsampling=1),
                  _jpeg(rgb, format="JPEG", quality=80, progressive=True),
                  _jpeg(rgb.convert("CMYK"), format="JPEG", quality=90),
                  _jpeg(rgb, format="PNG"),
                  _jpeg(rgb.convert("L"), format="PNG")]
    for k, blob in enumerate(blobs):
        full = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        view = np.frombuffer(blob, dtype=np.uint8)  # read-only, as the pipeline's blobs
        for given in (blob, view):
            out = decode_spectra([b"", given], {"a": 1, "b": 1},
                                 {"a": (0, 0, 30, 40), "b": (30, 5, 90, 35)}, decoder)
            assert np.array_equal(out["a"], full[0:40, 0:30]), k
            assert np.array_equal(out["b"], full[5:35, 30:90]), k


def test_decode_floor_script_runs_as_documented(tmp_path):
    """perf/decode_floor.py (docs/PERFORMANCE.md, "Input pipeline") at a tiny size, as a user
    runs it: both floors, the pipeline per decoder with its ratio, and the --profile steps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "perf" / "decode_floor.py"), "--work", str(tmp_path / "w"),
         "--layouts", "rgbnt100", "--ids", "4", "--tuples-per-id", "4", "--batch", "4",
         "--batches", "4", "--batches-per-task", "2", "--rounds", "1",
         "--decoders", "pil", "torchvision", "--profile"],
        capture_output=True, text=True, timeout=240, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "platform")})
    text = out.stdout
    assert "floor PIL decode + crop" in text and "floor torchvision decode + crop" in text, text
    assert text.count("ratio to the best floor") == 2, text
    assert text.count("processes lost 0") == 2, text
    assert "decode (torchvision)" in text and "decode (pil)" in text, text
