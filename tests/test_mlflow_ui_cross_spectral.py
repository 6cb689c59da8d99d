"""The query x gallery spectrum heatmaps in the MLflow UI: headless Chromium opens the parent run's
per-cell heatmap and a trial's heatmap as artifact previews (served by `msreid ui --serve`, what
`make ui` runs) and checks that the images render. No Ray: the runs are logged here directly, as a
benchmark logs them (tracking.cross_spectral). Skipped with the reason without a browser."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlflow_browser import chromium_page, missing_browser, mlflow_ui
from msreid.tracking import cross_spectral, runs
from msreid.tracking.store import ensure_experiment
from msreid.tracking.ui import run_url

CELL = ["robustness", "MSN + modality dropout", "test_resnet"]
KEYS = ["r", "n", "t", "rn", "rt", "nt", "rnt"]


def _matrix(base: float) -> pd.DataFrame:
    return pd.DataFrame([{"query": q, "gallery": g, "mAP": base + 5 * i + j, "R1": 50.0,
                          "R5": 60.0, "R10": 70.0, "mINP": 5.0}
                         for i, q in enumerate(KEYS) for j, g in enumerate(KEYS)])


def _image_size(page, timeout_s: float = 60.0) -> tuple[int, int]:
    """(naturalWidth, naturalHeight) of the artifact preview's image: MLflow fetches the file and
    shows it from a ``blob:`` URL (its own icons are data: URLs or small)."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        sizes = page.evaluate("""() => Array.from(document.images)
            .filter(i => i.complete && i.naturalWidth > 0 && i.src.startsWith('blob:'))
            .map(i => [i.naturalWidth, i.naturalHeight])""")
        if sizes:
            return tuple(sizes[0])
        time.sleep(0.5)
    raise AssertionError("no cross_spectral image rendered in the artifact preview")


@pytest.mark.timeout(480)
def test_heatmaps_render_in_the_mlflow_ui(tmp_path):
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = ensure_experiment(uri, "msreid-benchmark")
    client = runs.client_for(uri)
    parent, _ = runs.get_or_create_parent(client, exp, "robustness-ui")
    child = None
    for seed in (0, 1):
        child, _ = runs.get_or_create_child(client, exp, parent, f"k{seed}", f"s{seed}",
                                            tags={runs.TAG_CELLS: json.dumps([CELL]),
                                                  runs.TAG_SEED: str(seed)})
        folder = tmp_path / f"trial{seed}"
        folder.mkdir()
        _matrix(20.0 + seed).to_csv(folder / "cross_spectral.csv", index=False)
        png = cross_spectral.trial_heatmap(folder / "cross_spectral.csv",
                                           folder / "cross_spectral.png")
        client.log_artifact(child, str(folder / "cross_spectral.csv"), "evaluation")
        client.log_artifact(child, str(png), "figures")
        client.set_terminated(child, "FINISHED")
    cross_spectral.log_parent_matrices(client, exp, parent)
    slug = cross_spectral.cell_slug(CELL)
    with mlflow_ui(uri, "msreid-benchmark", tmp_path / "ui.log", timeout_s=240) as (base, _):
        with chromium_page() as page:
            page.goto(run_url(base, exp, parent, f"artifacts/cross_spectral/{slug}.png"))
            width, height = _image_size(page)
            assert width > 400 and height > 300  # the 7 x 7 heatmap, not a broken-image icon
            page.goto(run_url(base, exp, child, "artifacts/figures/cross_spectral.png"))
            width, height = _image_size(page)
            assert width > 400 and height > 300
    assert Path(tmp_path / "ui.log").is_file()
