"""Networks: MultiStreamNet on any timm backbone (docs/MODELS.md).

``build_model(backbone, spectra, num_classes, ...)`` is the one factory;
``BACKBONES`` is the explicit table of registered names (any other timm model
name works too).
"""

from msreid.models.backbones import (
    BACKBONES,
    BackboneSpec,
    LoadReport,
    load_backbone_file,
    read_state_dict,
    resolve_backbone,
)
from msreid.models.cams import class_aware_weights, official_fusion_weights, official_stream_weights
from msreid.models.multistream import (
    EMBED_AT,
    EMBEDDINGS,
    HEADS,
    MISSING,
    NECKS,
    MultiStreamNet,
    Stream,
    StreamOutput,
    build_model,
)

__all__ = [
    "BACKBONES", "BackboneSpec", "LoadReport", "load_backbone_file", "read_state_dict",
    "resolve_backbone", "EMBED_AT", "EMBEDDINGS", "HEADS", "MISSING", "NECKS", "MultiStreamNet",
    "Stream", "StreamOutput", "build_model", "class_aware_weights", "official_fusion_weights",
    "official_stream_weights",
]
