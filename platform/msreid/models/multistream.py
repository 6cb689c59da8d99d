"""MultiStreamNet: one independent timm backbone per spectrum (MSN / HAMNet).

Per stream j: feature map F^j [B, d, h, w] -> pooled feature f^j = GAP(F^j)
[B, d] -> optional BN-neck -> class scores S^j [B, C]. Two heads:

* ``head="paper"`` (default): a bias-free classifier W^j per stream, S^j = W^j f^j,
  and the class activation maps M^j = W^j F^j [B, C, h, w] (computed only when
  asked), so GAP(M^j) = S^j exactly (eq. 1). With a BN-neck the neck's
  per-channel affine map is applied to every location of F^j before W^j,
  which keeps the equality.
* ``head="official"`` (the authors' released code): ONE classifier with bias
  shared by all streams on the BN-necked features, S^j = W n^j + b, and CAMs
  from a separate bias-free 1x1 convolution per stream on F^j (not from W).

One-stream models are this class with one spectrum; MSN and HAMNet are the
same network trained with different losses (msreid.losses).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from msreid.errors import UserError
from msreid.models.backbones import create_backbone, resolve_backbone
from msreid.models.cams import at_least_float32, class_aware_weights, official_stream_weights
from msreid.models.sync_batchnorm import batch_moments

NECKS = ("none", "bnneck")
HEADS = ("paper", "official")
# cam_weighted is msreid's own rule (in neither the paper nor the authors' code);
# cam_official is the authors' test feature (docs/MODELS.md, "Test-time embedding").
EMBEDDINGS = ("sum", "concat", "cam_weighted", "cam_official")
CAM_EMBEDDINGS = ("cam_weighted", "cam_official")
EMBED_AT = ("before_neck", "after_neck")
MISSING = ("drop", "zero")


class StreamOutput(NamedTuple):
    """What :meth:`MultiStreamNet.forward` returns, one entry per stream in ``spectra`` order."""

    features: list[Tensor]  # pooled feature f^j [B, d], before the neck
    scores: list[Tensor]  # class scores S^j [B, C]
    cams: list[Tensor] | None  # CAMs M^j [B, C, h, w] when return_cams=True, else None
    necked: list[Tensor] | None = None  # f^j after the neck [B, d] (= features without neck)


class Stream(nn.Module):
    """One spectrum's branch: backbone, optional BN-neck, and its head part.

    head="paper": a bias-free classifier (its weights also give the CAMs);
    head="official": a bias-free 1x1 convolution giving the CAMs, and the
    scores come from the network's shared classifier passed to ``forward``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, neck: str,
                 head: str = "paper") -> None:
        super().__init__()
        self.backbone = backbone
        d = backbone.num_features
        self.feature_dim = d
        self.neck = nn.BatchNorm1d(d) if neck == "bnneck" else None
        if self.neck is not None:
            self.neck.bias.requires_grad_(False)  # BNNeck (Luo et al. 2019): no shift learnt
        self.classifier = self.cam_conv = None
        if head == "paper":
            self.classifier = nn.Linear(d, num_classes, bias=False)
            nn.init.normal_(self.classifier.weight, std=0.001)  # random init (paper)
        else:  # torch's default init, as the authors' nn.Conv2d
            self.cam_conv = nn.Conv2d(d, num_classes, kernel_size=1, bias=False)

    def feature_map(self, x: Tensor) -> Tensor:
        """F^j [B, d, h, w] from the backbone (ViT patch tokens reshaped to their grid)."""
        y = self.backbone.forward_features(x)
        if y.ndim == 3:  # tokens [B, N, d]: drop class/register tokens, patch grid -> map
            n_prefix = getattr(self.backbone, "num_prefix_tokens", 0)
            ph, pw = self.backbone.patch_embed.patch_size
            gh, gw = x.shape[-2] // ph, x.shape[-1] // pw
            tokens = y[:, n_prefix:]
            if tokens.shape[1] != gh * gw:
                raise ValueError(f"{tokens.shape[1]} patch tokens do not form a {gh}x{gw} grid")
            return tokens.transpose(1, 2).reshape(y.shape[0], y.shape[2], gh, gw)
        if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            return y.permute(0, 3, 1, 2)
        return y

    def neck_affine(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """(scale, shift) [d] such that neck(f) = scale * f + shift for this batch.

        In training the batch moments are the neck's own: the global batch's
        when the neck is a synced BatchNorm (``sync_batchnorm.batch_moments``).
        """
        bn = self.neck
        if bn.training or bn.running_mean is None:
            mean, var = batch_moments(bn, pooled)
        else:
            mean, var = bn.running_mean, bn.running_var
        scale = bn.weight / torch.sqrt(var + bn.eps)
        return scale, bn.bias - mean * scale

    def forward(self, x: Tensor, return_cam: bool = False, shared: nn.Module | None = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """x [B, 3, H, W] -> (f [B, d], neck(f) [B, d], S [B, C], M [B, C, h, w] or None).

        shared: the network's shared classifier (head="official" only).
        """
        fmap = self.feature_map(x)
        pooled = fmap.mean(dim=(2, 3))
        after = self.neck(pooled) if self.neck is not None else pooled
        if self.cam_conv is not None:  # official head: S = W n + b, M = conv1x1(F)
            return pooled, after, shared(after), self.cam_conv(fmap) if return_cam else None
        scores = self.classifier(after)  # S = W GAP(F) (= GAP(M), eq. 1)
        cam = None
        if return_cam:
            if self.neck is not None:
                scale, shift = self.neck_affine(pooled)
                fmap = fmap * scale[:, None, None] + shift[:, None, None]
            cam = torch.einsum("bdhw,cd->bchw", fmap, self.classifier.weight)  # M = W F
        return pooled, after, scores, cam


class MultiStreamNet(nn.Module):
    """m independent streams, one per spectrum; see the module docstring."""

    def __init__(self, streams: Mapping[str, Stream], num_classes: int, *,
                 embedding: str = "sum", embed_at: str = "before_neck") -> None:
        super().__init__()
        self.spectra: tuple[str, ...] = tuple(streams)
        self.num_classes = num_classes
        self.streams = nn.ModuleDict(streams)
        first = next(iter(streams.values()))
        self.feature_dim: int = first.feature_dim
        self.head = "paper" if first.classifier is not None else "official"
        # official head: one classifier with bias for all streams (torch's default init)
        self.shared_classifier = (nn.Linear(self.feature_dim, num_classes)
                                  if self.head == "official" else None)
        self.embedding = embedding
        self.embed_at = embed_at

    @property
    def embedding_dim(self) -> int:
        """D of :meth:`embed`: d for sum / cam_weighted, m * d for concat."""
        return self.feature_dim * (len(self.spectra) if self.embedding == "concat" else 1)

    def forward(self, images: Mapping[str, Tensor], return_cams: bool = False) -> StreamOutput:
        """images[s]: [B, 3, H, W] for every s in ``spectra``. CAMs only when return_cams."""
        self._check_keys(images, self.spectra)
        feats, scores, cams, necked = [], [], [], []
        for s in self.spectra:
            f, after, sc, cam = self.streams[s](images[s], return_cams, self.shared_classifier)
            feats.append(f)
            necked.append(after)
            scores.append(sc)
            cams.append(cam)
        return StreamOutput(feats, scores, cams if return_cams else None, necked)

    def embed(self, images: Mapping[str, Tensor], spectra: Sequence[str] | None = None,
              missing: str = "drop") -> Tensor:
        """Test-time embedding [B, D] from the subset ``spectra`` (default: all).

        missing="drop": streams outside the subset are not run and left out of
        the sum (concat: their slot is zeros); images may omit them.
        missing="zero": their stream runs on an all-zero image. Grad mode and
        train/eval mode are the caller's (use model.eval() and torch.inference_mode()).
        """
        use = tuple(self.spectra if spectra is None else spectra)
        return self.embed_subsets(images, [use], missing)[use]

    def embed_subsets(self, images: Mapping[str, Tensor], subsets: Sequence[Sequence[str]],
                      missing: str = "drop") -> dict[tuple[str, ...], Tensor]:
        """:meth:`embed` of every subset, each stream run once per input (not once per subset).

        The streams are independent, so a stream's output on the same image is the same in
        every subset; only the combination differs. For the 7 subsets of 3 spectra this
        runs 3 streams instead of 12 (missing="zero": at most 3 more, on zero images).
        Returns {subset as a tuple: [B, D]}.
        """
        if missing not in MISSING:
            raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
        uses = [tuple(sub) for sub in subsets]
        for use in uses:
            if not use or set(use) - set(self.spectra):
                raise ValueError(f"spectra {use} must be a non-empty subset of {self.spectra}")
            self._check_keys(images, use)
        want_cam = self.embedding in CAM_EMBEDDINGS
        outputs: dict[tuple[str, bool], tuple[Tensor, Tensor | None]] = {}  # (stream, real image)

        def stream(s: str, real: bool, ref: Tensor) -> tuple[Tensor, Tensor | None]:
            if (s, real) not in outputs:
                x = images[s] if real else torch.zeros_like(ref)
                f, after, _, cam = self.streams[s](x, want_cam, self.shared_classifier)
                outputs[s, real] = (after if self.embed_at == "after_neck" else f, cam)
            return outputs[s, real]

        out = {}
        for use in uses:
            ref = images[use[0]]
            run = [s for s in self.spectra if s in use or missing == "zero"]
            per_stream, cams = {}, []
            for s in run:
                per_stream[s], cam = stream(s, s in use, ref)
                cams.append(cam)
            out[use] = self._combine(per_stream, cams, ref)
        return out

    def _combine(self, per_stream: dict[str, Tensor], cams: list[Tensor | None],
                 ref: Tensor) -> Tensor:
        """Sum, concatenation (zeros for streams not run) or a CAM-weighted sum."""
        feats = list(per_stream.values())
        if self.embedding == "concat":
            zero = feats[0].new_zeros(feats[0].shape)
            return torch.cat([per_stream.get(s, zero) for s in self.spectra], dim=1)
        if self.embedding in CAM_EMBEDDINGS:
            w = (self.cam_weights(cams) if self.embedding == "cam_weighted"
                 else official_stream_weights(cams))  # [B, m_run]
            return sum(w[:, j, None] * f for j, f in enumerate(feats))
        return sum(feats)  # the paper's MSN rule

    @staticmethod
    def cam_weights(cams: Sequence[Tensor]) -> Tensor:
        """Per-sample stream weights [B, m] for the cam_weighted embedding (msreid's own rule).

        alpha^j_c of eqs. 7-10 averaged over classes with the fused prediction
        p' = softmax(GAP(M')) (eq. 11): w^j = sum_c p'_c alpha^j_c. Test
        identities are unseen, so the expectation over classes replaces a label.
        Neither the paper nor the authors' code defines this; their code's
        rule is ``embedding="cam_official"`` (msreid.models.cams.official_stream_weights).
        cams: m x [B, C, h, w].
        """
        alpha = class_aware_weights(cams)  # [m, B, C]
        fused = (alpha[..., None, None] * torch.stack([at_least_float32(c) for c in cams])).sum(0)
        p = torch.softmax(fused.mean(dim=(2, 3)), dim=1)  # [B, C]
        return torch.einsum("mbc,bc->bm", alpha, p)

    @staticmethod
    def _check_keys(images: Mapping[str, Tensor], needed: Sequence[str]) -> None:
        absent = [s for s in needed if s not in images]
        if absent:
            raise KeyError(f"images lacks spectra {absent}; it has {sorted(images)}")


def build_model(backbone: str, spectra: Sequence[str], num_classes: int, *,
                pretrained: bool = False, pretrained_file: str | None = None,
                last_stride_1: bool = False, neck: str = "none", embedding: str = "sum",
                embed_at: str = "before_neck", input_size: tuple[int, int] | None = None,
                head: str = "paper", stem_relu: bool = True, **timm_kwargs: Any) -> MultiStreamNet:
    """A MultiStreamNet with one ``backbone`` per spectrum, no parameters shared.

    backbone: a name of BACKBONES or any timm model name; spectra: e.g.
    ("rgb", "nir", "tir"); input_size: (H, W), only used by ViTs to size their
    position embedding (default: the backbone's); head: "paper" or "official"
    (see the module docstring); stem_relu=False: the authors' ResNet stem, without
    the ReLU after bn1 (ResNet family only). Extra keyword arguments
    (drop_path_rate, ...) go to timm.create_model.
    """
    spec = resolve_backbone(backbone)
    _check_choice("neck", neck, NECKS)
    _check_choice("head", head, HEADS)
    _check_choice("embedding", embedding, EMBEDDINGS)
    _check_choice("embed_at", embed_at, EMBED_AT)
    if not spectra or len(set(spectra)) != len(spectra):
        raise UserError(f"spectra must be non-empty and without repeats, got {list(spectra)}")
    if num_classes < 1:
        raise UserError(f"num_classes must be >= 1, got {num_classes}")
    size = tuple(input_size) if input_size is not None else spec.input_size
    streams = {
        s: Stream(create_backbone(spec, size, pretrained=pretrained,
                                  pretrained_file=pretrained_file,
                                  last_stride_1=last_stride_1, stem_relu=stem_relu,
                                  **timm_kwargs),
                  num_classes, neck, head)
        for s in spectra
    }
    return MultiStreamNet(streams, num_classes, embedding=embedding, embed_at=embed_at)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name}={value!r} is not valid: use one of {', '.join(choices)}")
