"""What a finished trial logs to its MLflow child run besides the live per-epoch metrics."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from msreid.evaluation import names
from msreid.tracking.comparison import epoch_metrics
from msreid.tracking.cross_spectral import trial_heatmap
from msreid.tracking.entities import percent_csv
from msreid.tracking.figures import cam_overlays, cmc_plot, ranked_list_figure
from msreid.tracking.runs import log_files, log_metrics

log = logging.getLogger(__name__)

PERCENT_FILES = (names.CMC_FILE, names.MISSING_MODALITY_FILE,  # logged in %, 2 decimals
                 names.PER_CHALLENGE_FILE)


def log_history(client, run_id: str, history: list[dict]) -> None:
    """Log per-epoch metrics (step = epoch) for epochs the live callback did not log."""
    if not history:
        return
    probe = next((k for k in ("train/loss", "lr") if k in history[0]), None)
    logged = set()
    if probe:
        logged = {m.step for m in client.get_metric_history(run_id, probe)}
    for entry in history:
        if "epoch" not in entry:  # fit appends the final metrics, logged separately
            continue
        epoch = int(entry["epoch"])
        if epoch not in logged:
            log_metrics(client, run_id, epoch_metrics(entry), step=epoch)


def log_trial_artifacts(client, run_id: str, cfg, outcome, figures: dict) -> None:
    """Evaluation tables (CSV/JSON), the CMC plot, the query x gallery spectrum heatmap
    (``figures/cross_spectral.png``), the ranked-list figure and CAM overlays."""
    art = Path(outcome.artifacts_dir) if outcome.artifacts_dir else None
    if art is None or not art.is_dir():
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        files = [percent_csv(art / n, out) if n in PERCENT_FILES and (art / n).is_file()
                 else art / n for n in names.ARTIFACT_FILES]
        log_files(client, run_id, files, "evaluation")
        made = []
        if (art / names.CMC_FILE).is_file():
            made.append(cmc_plot(art / names.CMC_FILE, out / "cmc.png"))
        made.append(trial_heatmap(art / names.CROSS_SPECTRAL_FILE, out / "cross_spectral.png"))
        ranking = art / names.RANKING_FILE
        if ranking.is_file() and figures.get("ranked_list", True):
            made.append(ranked_list_figure(ranking, cfg.data.manifest,
                                             out / "ranked_list.png"))
        log_files(client, run_id, [p for p in made if p], "figures")
        cams = figures.get("cam_queries", 3)
        if cams and outcome.checkpoint_path:
            paths = cam_overlays(outcome.checkpoint_path, ranking,
                                   cfg.data.manifest, out / "cams", max_queries=cams)
            log_files(client, run_id, paths, "figures/cams")
