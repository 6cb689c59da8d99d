"""MultiStreamNet: CAM linearity, embeddings, missing spectra, last stride, errors."""

from __future__ import annotations

import pytest
import torch

from msreid.errors import UserError
from msreid.models import BACKBONES, build_model

SPECTRA = ("rgb", "nir", "tir")


def images(b: int = 2, h: int = 64, w: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(b, 3, h, w, generator=g) for s in SPECTRA}


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit", "test_efficientnet"])
@pytest.mark.parametrize("neck", ["none", "bnneck"])
@pytest.mark.parametrize("train", [True, False])
def test_gap_of_cams_equals_scores(backbone, neck, train):
    torch.manual_seed(0)
    model = build_model(backbone, SPECTRA, num_classes=5, neck=neck).train(train)
    with torch.no_grad():
        out = model(images(), return_cams=True)
    assert len(out.cams) == 3
    for cam, scores in zip(out.cams, out.scores):
        assert cam.shape[:2] == (2, 5)
        torch.testing.assert_close(cam.mean(dim=(2, 3)), scores, rtol=1e-4, atol=1e-6)


def test_cams_only_when_asked_and_shapes():
    model = build_model("test_resnet", SPECTRA, num_classes=7)
    out = model(images())
    assert out.cams is None
    assert [f.shape for f in out.features] == [(2, 96)] * 3  # test_resnet: d = 96
    assert [s.shape for s in out.scores] == [(2, 7)] * 3
    assert model.feature_dim == 96 and model.spectra == SPECTRA and model.num_classes == 7


def test_vit_cams_are_on_the_patch_grid():
    # test_vit: patch 16, input 64 x 128 -> 4 x 8 patch tokens (+ 1 class token dropped)
    model = build_model("test_vit", ["rgb"], num_classes=3)
    out = model({"rgb": torch.randn(2, 3, 64, 128)}, return_cams=True)
    assert out.cams[0].shape == (2, 3, 4, 8)


def test_streams_share_no_parameters():
    model = build_model("test_resnet", SPECTRA, num_classes=4)
    ptrs = [{p.data_ptr() for p in model.streams[s].parameters()} for s in SPECTRA]
    assert not (ptrs[0] & ptrs[1]) and not (ptrs[0] & ptrs[2]) and not (ptrs[1] & ptrs[2])


def test_sum_embedding_is_sum_of_stream_features():
    model = build_model("test_resnet", SPECTRA, num_classes=4).eval()
    x = images()
    with torch.no_grad():
        feats = model(x).features
        emb = model.embed(x)
    torch.testing.assert_close(emb, feats[0] + feats[1] + feats[2])


@pytest.mark.parametrize("embedding,dim", [("sum", 96), ("concat", 288), ("cam_weighted", 96),
                                           ("cam_official", 96)])
@pytest.mark.parametrize("missing", ["drop", "zero"])
def test_missing_spectrum_shape_and_independence(embedding, dim, missing):
    model = build_model("test_resnet", SPECTRA, num_classes=4, embedding=embedding,
                        neck="bnneck", embed_at="after_neck").eval()
    assert model.embedding_dim == dim
    x = images(seed=1)
    y = dict(x, nir=torch.randn(2, 3, 64, 128) * 10)  # only the dropped spectrum changes
    with torch.no_grad():
        a = model.embed(x, spectra=["rgb", "tir"], missing=missing)
        b = model.embed(y, spectra=["rgb", "tir"], missing=missing)
        full = model.embed(x)
    assert a.shape == (2, dim)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, full)  # the subset really is a different embedding
    if missing == "drop":  # the dropped spectrum may be absent altogether
        c = model.embed({"rgb": x["rgb"], "tir": x["tir"]}, spectra=["rgb", "tir"])
        torch.testing.assert_close(a, c)


def test_drop_and_zero_differ_and_concat_slot_is_zero():
    model = build_model("test_resnet", SPECTRA, num_classes=4, embedding="concat").eval()
    x = images()
    with torch.no_grad():
        drop = model.embed(x, spectra=["rgb"], missing="drop")
        zero = model.embed(x, spectra=["rgb"], missing="zero")
    assert torch.equal(drop[:, 96:], torch.zeros(2, 192))
    torch.testing.assert_close(drop[:, :96], zero[:, :96])
    # "zero" runs the other streams on all-zero images: reference computed stream by stream
    with torch.no_grad():
        blank = torch.zeros(2, 3, 64, 128)
        ref = torch.cat([model.streams[s](blank)[0] for s in ("nir", "tir")], dim=1)
    torch.testing.assert_close(zero[:, 96:], ref)


@pytest.mark.parametrize("embedding", ["sum", "concat", "cam_weighted", "cam_official"])
@pytest.mark.parametrize("missing", ["drop", "zero"])
def test_embed_subsets_runs_each_stream_once_with_the_same_numbers(embedding, missing):
    from msreid.evaluation import spectrum_subsets

    head = "official" if embedding == "cam_official" else "paper"
    torch.manual_seed(0)
    model = build_model("test_resnet", SPECTRA, num_classes=4, embedding=embedding,
                        neck="bnneck", head=head).eval()
    x = images()
    subsets = spectrum_subsets(SPECTRA)  # 7 subsets; one at a time they run 12 streams
    calls = []
    hooks = [model.streams[s].register_forward_hook(lambda m, i, o, s=s: calls.append(s))
             for s in SPECTRA]
    with torch.no_grad():
        together = model.embed_subsets(x, subsets, missing=missing)
        runs_together = len(calls)
        alone = {u: model.embed(x, spectra=u, missing=missing) for u in subsets}
    for h in hooks:
        h.remove()
    # drop: 3 real images; zero: 3 real + 3 all-zero images (every stream misses somewhere)
    assert runs_together == (3 if missing == "drop" else 6)
    assert len(calls) - runs_together == 12 + (9 if missing == "zero" else 0)
    assert list(together) == subsets
    for u in subsets:  # the same operations on the same inputs: bit-identical
        assert torch.equal(together[u], alone[u]), u
    if embedding == "sum" and missing == "drop":  # by hand: the sum of the subset's streams
        with torch.no_grad():
            per = {s: model.streams[s](x[s])[0] for s in SPECTRA}
        for u in subsets:
            torch.testing.assert_close(together[u], sum(per[s] for s in u), rtol=0, atol=1e-6)


def test_cam_weights_sum_to_one():
    model = build_model("test_resnet", SPECTRA, num_classes=4).eval()
    with torch.no_grad():
        out = model(images(), return_cams=True)
    w = model.cam_weights(out.cams)
    assert w.shape == (2, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(2))


def test_embed_rejects_unknown_spectrum():
    model = build_model("test_resnet", ["rgb", "nir"], num_classes=4)
    with pytest.raises(ValueError, match="subset"):
        model.embed(images(), spectra=["tir"])
    with pytest.raises(KeyError, match="nir"):
        model({"rgb": torch.randn(2, 3, 64, 128)})


def test_last_stride_1_doubles_the_map():
    # test_resnet at 64 x 128: overall stride 32 -> 2 x 4; last stride 1 -> stride 16 -> 4 x 8
    x = {"rgb": torch.randn(2, 3, 64, 128)}
    plain = build_model("test_resnet", ["rgb"], num_classes=3)
    ls1 = build_model("test_resnet", ["rgb"], num_classes=3, last_stride_1=True)
    assert plain(x, return_cams=True).cams[0].shape[-2:] == (2, 4)
    assert ls1(x, return_cams=True).cams[0].shape[-2:] == (4, 8)


def test_last_stride_1_refused_where_unsupported():
    with pytest.raises(UserError, match="last_stride_1"):
        build_model("test_efficientnet", ["rgb"], num_classes=3, last_stride_1=True)


def test_unknown_backbone_lists_the_names():
    with pytest.raises(UserError) as err:
        build_model("resnet5O", ["rgb"], num_classes=3)
    msg = str(err.value)
    assert "resnet50" in msg and "inception_v3" in msg and "timm" in msg


def test_any_timm_model_name_works():
    model = build_model("test_nfnet", ["rgb", "nir"], num_classes=3)
    out = model({s: torch.randn(2, 3, 64, 64) for s in ("rgb", "nir")}, return_cams=True)
    torch.testing.assert_close(out.cams[1].mean((2, 3)), out.scores[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs,field", [({"neck": "bn"}, "neck"), ({"embedding": "max"}, "embedding"),
                                          ({"embed_at": "late"}, "embed_at")])
def test_bad_options_are_user_errors(kwargs, field):
    with pytest.raises(UserError, match=field):
        build_model("test_resnet", ["rgb"], num_classes=3, **kwargs)


def test_paper_input_sizes():
    assert BACKBONES["resnet50"].input_size == (128, 256)  # "128 * 256": 128 high, 256 wide
    assert BACKBONES["densenet121"].input_size == (128, 256)
    assert BACKBONES["mobilenetv2_100"].input_size == (128, 256)
    assert BACKBONES["seresnet50"].input_size == (224, 224)
    assert BACKBONES["inception_v3"].input_size == (299, 299)
    assert BACKBONES["inception_resnet_v2"].input_size == (299, 299)


def test_channels_last_gives_the_same_output():
    model = build_model("test_resnet", ["rgb"], num_classes=3).eval()
    x = {"rgb": torch.randn(2, 3, 64, 128)}
    with torch.no_grad():
        ref = model(x, return_cams=True)
        model = model.to(memory_format=torch.channels_last)
        got = model({"rgb": x["rgb"].to(memory_format=torch.channels_last)}, return_cams=True)
    torch.testing.assert_close(got.cams[0], ref.cams[0], rtol=1e-4, atol=1e-5)
