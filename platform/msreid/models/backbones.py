"""Backbones: the explicit table of registered names and how one stream's timm model is built.

Every backbone is a plain ``timm.create_model(name, num_classes=0)``; nothing
is copied from timm. This module adds only what re-ID needs on top:
per-backbone input sizes from the paper, the last-stride-1 switch and the
authors' stem without its ReLU for ResNet-family models, and loading weights
from a local file (offline clusters).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from msreid.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: which timm model and its defaults."""

    timm_name: str = field(metadata={"help": "name passed to timm.create_model"})
    input_size: tuple[int, int] = field(
        metadata={"help": "default (H, W) of the input images, per the paper where it says"})
    family: str = field(metadata={"help": "resnet | densenet | inception | mobilenet | vit | test"})
    supports_last_stride: bool = field(
        default=False, metadata={"help": "last_stride_1=True is allowed (ResNet family)"})
    slow: bool = field(default=False, metadata={"help": "large model: its tests carry @slow"})


# The paper: "128 * 256 for ResNet50, Densenet121 and MobileNetV2, 224 * 224 for
# SeResNet50, and 299 * 299 for InceptionResNetV3". The released vehicle crops are
# 256 wide x 128 high, so 128 * 256 is (H, W) = (128, 256).
BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec("resnet50", (128, 256), "resnet", True, slow=True),
    "seresnet50": BackboneSpec("seresnet50", (224, 224), "resnet", True, slow=True),
    "densenet121": BackboneSpec("densenet121", (128, 256), "densenet", slow=True),
    # The paper's "InceptionResNetV3" does not exist; inception_v3 is our default
    # for that column and inception_resnet_v2 is offered too (docs/MODELS.md).
    "inception_v3": BackboneSpec("inception_v3", (299, 299), "inception", slow=True),
    "inception_resnet_v2": BackboneSpec("inception_resnet_v2", (299, 299), "inception", slow=True),
    "mobilenetv2_100": BackboneSpec("mobilenetv2_100", (128, 256), "mobilenet", slow=True),
    # Later multi-spectral work (TOP-ReID and after) uses CLIP ViT-B/16.
    "vit_base_patch16_clip_224": BackboneSpec(
        "vit_base_patch16_clip_224", (128, 256), "vit", slow=True),
    # timm's tiny models: random weights, for fast CPU runs and tests.
    "test_resnet": BackboneSpec("test_resnet", (64, 128), "resnet", True),
    "test_efficientnet": BackboneSpec("test_efficientnet", (64, 128), "test"),
    "test_byobnet": BackboneSpec("test_byobnet", (64, 128), "test"),
    "test_vit": BackboneSpec("test_vit", (64, 128), "vit"),
}


def resolve_backbone(name: str) -> BackboneSpec:
    """The spec of a registered name, or one derived from timm for any other timm model.

    Raises UserError for a name neither registered nor known to timm.
    """
    if name in BACKBONES:
        return BACKBONES[name]
    if not timm.is_model(name):
        raise UserError(
            f"backbone {name!r} is unknown: use one of {', '.join(sorted(BACKBONES))} "
            "or any model name timm knows (timm.list_models())")
    module = timm.models._registry._model_to_module.get(name, "")
    family = {"resnet": "resnet", "vision_transformer": "vit"}.get(module, module)
    cfg = timm.models.get_pretrained_cfg(name)
    size = tuple(cfg.input_size[1:]) if cfg is not None else (224, 224)
    return BackboneSpec(name, size, family, supports_last_stride=family == "resnet")


def set_last_stride_1(model: nn.Module) -> None:
    """Set the stride of the last stage's first block to 1 (conv and downsample).

    For timm ResNets (``layer4[0]``): every stride-2 conv becomes stride 1 and
    a stride-2 average pool in the downsample path (``avg_down`` variants)
    becomes an identity, so the last feature map is twice as high and wide.
    """
    block = model.layer4[0]
    for parent in block.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                child.stride = (1, 1)
            elif isinstance(child, nn.AvgPool2d) and child.stride not in (1, (1, 1)):
                setattr(parent, child_name, nn.Identity())


def remove_stem_relu(model: nn.Module) -> None:
    """Drop the ReLU after the stem's ``bn1`` (timm's ``act1``), as the authors' ResNet.

    Their ``modeling/backbones/resnet.py`` has that ReLU commented out, so their
    network is conv1 -> bn1 -> maxpool -> layer1...; the max pool then sees
    negative values too. No parameter changes: weight files load the same.
    """
    if not isinstance(getattr(model, "act1", None), nn.Module):
        raise UserError(f"stem_relu=False needs a timm ResNet with a stem activation 'act1'; "
                        f"{type(model).__name__} has none: set stem_relu to true")
    model.act1 = nn.Identity()


def create_backbone(spec: BackboneSpec, input_size: tuple[int, int], *, pretrained: bool = False,
                    pretrained_file: str | None = None, last_stride_1: bool = False,
                    stem_relu: bool = True, **timm_kwargs: Any) -> nn.Module:
    """One stream's backbone: a timm model without classifier (``num_classes=0``).

    ``pretrained=True`` uses timm's own loading (needs internet);
    ``pretrained_file`` loads a local .safetensors / .pth instead.
    ``stem_relu=False`` builds the authors' stem (no ReLU after ``bn1``).
    """
    if last_stride_1 and not spec.supports_last_stride:
        raise UserError(
            f"last_stride_1=True is not supported for backbone {spec.timm_name!r} "
            f"(family {spec.family!r}): only ResNet-family backbones have it; set it to false")
    if not stem_relu and not spec.supports_last_stride:
        raise UserError(
            f"stem_relu=False is not supported for backbone {spec.timm_name!r} "
            f"(family {spec.family!r}): only ResNet-family backbones have the authors' stem; "
            "set it to true")
    if pretrained and pretrained_file:
        raise UserError("pretrained=True and pretrained_file are exclusive: pick one")
    kwargs = dict(timm_kwargs)
    if spec.family == "vit":
        kwargs.setdefault("img_size", tuple(input_size))
    model = _create_timm(spec.timm_name, pretrained, **kwargs)
    if pretrained_file:
        load_backbone_file(model, pretrained_file)
    if last_stride_1:
        set_last_stride_1(model)
    if not stem_relu:
        remove_stem_relu(model)
    return model


def _create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, num_classes=0)``; a failed hub download becomes a UserError."""
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub failures come as many exception types
        if not pretrained:
            raise
        raise UserError(
            f"could not load timm's pretrained weights for {name!r} ({type(exc).__name__}: "
            f"{exc}); this needs internet. Either give a local weights file with "
            "pretrained_file=PATH (.safetensors or .pth), or set pretrained=false") from exc


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_backbone_file` did with the keys of a weights file."""

    path: str
    loaded: int
    ignored_head: tuple[str, ...]
    ignored_other: tuple[str, ...]
    filled: tuple[str, ...] = ()  # BatchNorm num_batches_tracked the file lacked (torch's fill)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _existing_weights(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained_file {str(path)!r} does not exist: give the path of a "
                        ".safetensors or .pth file, or set pretrained=true (needs internet)")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"pretrained_file {str(path)!r}: unknown suffix {path.suffix!r}; "
                        "use .safetensors or .pth")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors or .pth file, loaded without pickle code execution.

    UserError naming the file when it does not parse or holds no ``{name: tensor}`` mapping.
    """
    path = _existing_weights(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise UserError(f"pretrained_file {str(path)!r} is not a readable .safetensors file "
                            f"({type(exc).__name__}: {exc}); download or save it again") from None
    else:
        try:
            with warnings.catch_warnings():  # torch's note on pickle protocols != 2: the
                # refusal below already names the file and what to do
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError and others
            raise UserError(f"pretrained_file {str(path)!r} cannot be read as plain tensors "
                            f"({type(exc).__name__}); re-save it as a state_dict or "
                            ".safetensors") from exc
    for key in ("state_dict", "model", "module"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"pretrained_file {str(path)!r} holds a {type(state).__name__}, not a "
                        "state_dict ({name: tensor}); save model.state_dict() instead")
    tensors = {str(k).removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise UserError(f"pretrained_file {str(path)!r} holds no tensors; save "
                        "model.state_dict() instead")
    return tensors


@functools.lru_cache(maxsize=16)
def _check_weights_cached(path: str, size: int, mtime_ns: int) -> None:
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        try:  # parses and bounds-checks the header (the whole file's layout), reads no tensors
            with safe_open(path, framework="pt") as f:
                names = list(f.keys())
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
            raise UserError(f"pretrained_file {path!r} is not a readable .safetensors file "
                            f"({type(exc).__name__}: {exc}); download or save it again") from None
        if not names:
            raise UserError(f"pretrained_file {path!r} holds no tensors; save "
                            "model.state_dict() instead")
    else:
        read_state_dict(path)


def check_weights_file(path: str | Path) -> None:
    """Pre-flight check of ``model.pretrained_file`` on the driver, before Ray starts.

    Exists, has a known suffix, parses, and holds a ``{name: tensor}`` mapping;
    otherwise one UserError naming the file. Whether the tensors fit the
    backbone is checked when the model is built. Cached per (path, size, mtime).
    """
    checked = _existing_weights(path)
    stat = checked.stat()
    _check_weights_cached(str(checked), stat.st_size, stat.st_mtime_ns)


def load_backbone_file(model: nn.Module, path: str | Path) -> LoadReport:
    """Load a weights file into a timm backbone built with ``num_classes=0``.

    Strict about the backbone: a parameter or buffer the model has but the
    file lacks, or a shape that differs, raises UserError. The one exception
    are BatchNorm ``num_batches_tracked`` counters, which files saved before
    torch 0.4.1 (torchvision's ``resnet50-19c8e357.pth``) do not hold: torch's
    own ``load_state_dict`` fills them (with the module's current count, 0 for
    a new model) and the report lists them. Keys of timm's classifier head and
    other extra keys are ignored and reported (log + return value). A ViT
    position embedding of another grid is resampled with timm's own helper.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    _resample_pos_embed(model, state)
    fillable = _batch_counters(model)
    filled = tuple(k for k in own if k not in state and k in fillable)
    missing = [k for k in own if k not in state and k not in fillable]
    if missing:
        raise UserError(f"pretrained_file {str(path)!r} lacks {len(missing)} backbone weights "
                        f"of {type(model).__name__} (first: {missing[:5]}): is it a checkpoint "
                        "of the same architecture?")
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    if bad:
        raise UserError(f"pretrained_file {str(path)!r}: shapes differ for {bad[:5]} "
                        f"(file {tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)})")
    head = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)
    extra = [k for k in state if k not in own]
    ignored_head = tuple(k for k in extra if any(k.startswith(h + ".") for h in heads))
    ignored_other = tuple(k for k in extra if k not in ignored_head)
    # a plain dict has no per-module version metadata, so BatchNorm fills num_batches_tracked
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=True)
    report = LoadReport(str(path), len(own) - len(filled), ignored_head, ignored_other, filled)
    log.info("loaded %d tensors from %s; filled %d BatchNorm num_batches_tracked the file lacks; "
             "ignored classifier keys %s, other keys %s", report.loaded, path, len(filled),
             list(ignored_head), list(ignored_other))
    return report


def _batch_counters(model: nn.Module) -> set[str]:
    """State-dict keys of the ``num_batches_tracked`` buffers of the model's BatchNorms."""
    return {f"{name}.num_batches_tracked" if name else "num_batches_tracked"
            for name, module in model.named_modules()
            # _NormBase: where torch's _load_from_state_dict does the fill
            if isinstance(module, nn.modules.batchnorm._NormBase)
            and module.track_running_stats}


def _resample_pos_embed(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resample a ViT ``pos_embed`` of another grid size in place (timm's helper)."""
    own = getattr(model, "pos_embed", None)
    theirs = state.get("pos_embed")
    if own is None or theirs is None or own.shape == theirs.shape:
        return
    from timm.layers import resample_abs_pos_embed
    prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(
        theirs, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix)
