"""Pretrained weights: local .safetensors / .pth files, and the error when timm's hub fails."""

from __future__ import annotations

import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from msreid.errors import UserError
from msreid.models import build_model, load_backbone_file


def reference_state(name: str = "test_resnet", **kwargs) -> dict[str, torch.Tensor]:
    """State dict of a fresh timm model *with* its classifier head (like a hub checkpoint)."""
    torch.manual_seed(123)
    return {k: v.contiguous() for k, v in timm.create_model(name, **kwargs).state_dict().items()}


def assert_backbones_equal(model, state: dict[str, torch.Tensor]) -> None:
    for s in model.spectra:
        own = model.streams[s].backbone.state_dict()
        assert own.keys() <= state.keys()
        for k, v in own.items():
            assert torch.equal(v, state[k]), (s, k)


def test_safetensors_file_loads_into_every_stream(tmp_path):
    state = reference_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    model = build_model("test_resnet", ["rgb", "nir"], num_classes=5, pretrained_file=str(path))
    assert_backbones_equal(model, state)
    # the classifier stays the msreid one: random, bias-free, C = 5
    assert model.streams["rgb"].classifier.weight.shape == (5, model.feature_dim)


def test_pth_file_with_wrapper_and_report(tmp_path):
    state = reference_state()
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    model = build_model("test_resnet", ["rgb"], num_classes=5, pretrained_file=str(path))
    assert_backbones_equal(model, state)
    backbone = timm.create_model("test_resnet", num_classes=0)
    report = load_backbone_file(backbone, path)
    assert set(report.ignored_head) == {"fc.weight", "fc.bias"}  # timm's head: ignored, reported
    assert report.ignored_other == ()
    assert report.loaded == len(backbone.state_dict())


def test_vit_file_of_another_grid_is_resampled(tmp_path):
    # weights saved at timm's default 160 x 160 (10 x 10 patches) load into a 64 x 128 model
    state = reference_state("test_vit")
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    model = build_model("test_vit", ["rgb"], num_classes=3, pretrained_file=str(path))
    own = model.streams["rgb"].backbone.state_dict()
    assert own["pos_embed"].shape == (1, 1 + 4 * 8, 64)
    assert torch.equal(own["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_model("test_resnet", ["rgb"], num_classes=3,
                    pretrained_file=str(tmp_path / "nope.safetensors"))


def test_file_of_another_architecture_is_a_user_error(tmp_path):
    path = tmp_path / "eff.safetensors"
    save_file(reference_state("test_efficientnet"), str(path))
    with pytest.raises(UserError, match="lacks"):
        build_model("test_resnet", ["rgb"], num_classes=3, pretrained_file=str(path))


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(UserError, match="plain tensors"):
        build_model("test_resnet", ["rgb"], num_classes=3, pretrained_file=str(path))


def test_hub_failure_names_both_options(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("no internet")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError) as err:
        build_model("test_resnet", ["rgb"], num_classes=3, pretrained=True)
    assert "pretrained_file" in str(err.value) and "pretrained=false" in str(err.value)


def corrupt_copies(tmp_path) -> dict[str, object]:
    """Broken weight files as users meet them: truncated download, zeroed header, a list."""
    path = tmp_path / "good.safetensors"
    save_file(reference_state(), str(path))
    raw = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "zeroed.safetensors").write_bytes(b"\0" * 100 + raw[100:])
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pth")
    return {"truncated.safetensors": "is not a readable .safetensors file",
            "zeroed.safetensors": "is not a readable .safetensors file",
            "list.pth": "holds a list, not a state_dict",
            "no_tensors.pth": "holds no tensors"}


def test_check_weights_file_names_each_broken_file(tmp_path):
    from msreid.models.backbones import check_weights_file

    for name, needle in corrupt_copies(tmp_path).items():
        with pytest.raises(UserError) as err:
            check_weights_file(tmp_path / name)
        assert f"pretrained_file {str(tmp_path / name)!r}" in str(err.value) and needle in str(err.value)
        with pytest.raises(UserError, match=needle):  # and the same when the model is built
            build_model("test_resnet", ["rgb"], num_classes=3, pretrained_file=str(tmp_path / name))
    check_weights_file(tmp_path / "good.safetensors")  # the intact file passes


def test_check_weights_file_sees_a_rewritten_file(tmp_path):
    from msreid.models.backbones import check_weights_file

    path = tmp_path / "w.pth"
    torch.save(reference_state(), path)
    check_weights_file(path)
    torch.save([1, 2], path)  # same path, new content: the cache must not hide it
    with pytest.raises(UserError, match="holds a list"):
        check_weights_file(path)


def test_torchvision_file_without_batch_counters_loads(tmp_path):
    """torchvision's resnet50-19c8e357.pth (what the authors load) predates num_batches_tracked."""
    import torchvision

    torch.manual_seed(7)
    state = {k: v for k, v in torchvision.models.resnet50().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert len(state) == 267  # 161 parameters (fc.* included) + 53 x (running mean, var)
    path = tmp_path / "resnet50-tv.pth"
    torch.save(state, path)
    model = build_model("resnet50", ["rgb"], num_classes=3, pretrained_file=str(path),
                        last_stride_1=True, stem_relu=False)
    backbone = model.streams["rgb"].backbone
    own = backbone.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k  # every weight and running statistic landed
    counters = [k for k in own if k.endswith("num_batches_tracked")]
    assert len(counters) == 53 and all(own[k].item() == 0 for k in counters)  # torch's fill
    report = load_backbone_file(timm.create_model("resnet50", num_classes=0), path)
    assert sorted(report.filled) == sorted(counters)
    assert report.loaded == 265 and set(report.ignored_head) == {"fc.weight", "fc.bias"}


def test_missing_weight_or_wrong_shape_is_still_a_user_error(tmp_path):
    state = {k: v for k, v in reference_state().items() if not k.endswith("num_batches_tracked")}
    for name, broken, needle in [
            ("lacks.pth", {k: v for k, v in state.items() if k != "conv1.0.weight"},
             r"lacks 1 backbone weights .*conv1\.0\.weight"),
            ("lacks_stat.pth", {k: v for k, v in state.items() if k != "bn1.running_var"},
             r"lacks 1 backbone weights .*bn1\.running_var"),
            ("shape.pth", {**state, "bn1.weight": torch.ones(3)}, r"shapes differ for \['bn1\.weight'\]")]:
        torch.save(broken, tmp_path / name)
        with pytest.raises(UserError, match=needle):
            build_model("test_resnet", ["rgb"], num_classes=3, pretrained_file=str(tmp_path / name))


def test_pickled_file_is_refused_without_torch_pickle_warning(tmp_path):
    # pickles of protocol != 2 made torch print "Detected pickle protocol 4 ... return
    # Unpickler(file, ...).load()" beside the refusal; the refusal alone is the message
    with open(tmp_path / "pickled.pth", "wb") as f:
        pickle.dump({"conv1.weight": object()}, f, protocol=4)  # plain pickle, no zip
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": object()}, tmp_path / "p4.pth",
               pickle_protocol=4)
    for name in ("pickled.pth", "p4.pth"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(UserError, match="plain tensors"):
                build_model("test_resnet", ["rgb"], num_classes=3,
                            pretrained_file=str(tmp_path / name))
        assert [str(w.message) for w in caught] == [], name


def test_authors_stem_has_no_relu_after_bn1():
    from torch import nn

    torch.manual_seed(0)
    theirs = build_model("test_resnet", ["rgb"], num_classes=3, stem_relu=False).eval()
    with torch.no_grad():  # timm zero-inits each block's last BN scale: residual branches on
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    standard = build_model("test_resnet", ["rgb"], num_classes=3).eval()
    standard.load_state_dict(theirs.state_dict())
    a, b = theirs.streams["rgb"].backbone, standard.streams["rgb"].backbone
    assert isinstance(a.act1, nn.Identity) and isinstance(b.act1, nn.ReLU)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        stem = a.bn1(a.conv1(x))
        assert (stem < 0).any()  # the max pool sees negative values in their stem
        torch.testing.assert_close(a.maxpool(a.act1(stem)), nn.functional.max_pool2d(stem, 3, 2, 1))
        assert not torch.allclose(theirs.embed({"rgb": x}), standard.embed({"rgb": x}))
    with pytest.raises(UserError, match="stem_relu=False is not supported"):
        build_model("test_efficientnet", ["rgb"], num_classes=3, stem_relu=False)
