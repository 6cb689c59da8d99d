"""msreid: multi-spectral (RGB / NIR / TIR) re-identification experiments.

Library code (``msreid.data``, ``msreid.models``, ``msreid.losses``,
``msreid.evaluation``) is plain torch / numpy / pyarrow. Ray and MLflow live
only in ``msreid.train``, ``msreid.orchestration`` and ``msreid.tracking``.
"""

__version__ = "0.1.0"

SPECTRA = ("rgb", "nir", "tir")
"""Every spectrum msreid knows, in the canonical order used everywhere."""
