"""The names of evaluation results, declared once for every layer that writes or reads them.

A logged metric is ``<prefix><metric>``: ``test/mAP``, ``val/R1``. The artifact files are
what a run's final test writes into its final checkpoint (``msreid.train.evaluate``) and
what the tracking layer logs from there (``msreid.tracking.trial_logging``). Plain strings:
this module imports nothing.
"""

from __future__ import annotations

CMC_RANKS = (1, 5, 10)
"""The CMC ranks every evaluation reports, each as the metric ``R<k>``."""

MAP, MINP = "mAP", "mINP"
CMC_METRICS = tuple(f"R{k}" for k in CMC_RANKS)

METRIC_NAMES = (MAP, MINP, *CMC_METRICS)
"""Every metric of one evaluation, in the order ``RankResult.as_dict`` gives them and the
breakdown tables (missing_modality.csv, per_challenge.csv) have them as columns."""

TABLE_METRICS = (MAP, *CMC_METRICS, MINP)
"""The same metrics in reading order: the columns of cross_spectral.csv, the summary that
``msreid train`` prints."""

# Key prefixes: which set, which model.
VAL = "val/"  # validation of the epoch's weights
BEST_VAL = "best_val/"  # validation of the selected epoch
TEST = "test/"  # test of the selected model
FINAL_TEST = "final_test/"  # test of the last epoch's model (run.log_final_test)
TEST_CURVE = "test_curve/"  # test every run.test_curve_every epochs, never for selection
QUERIES = "queries"  # <prefix>queries: the queries with a match, over which mAP is the mean

# The artifact files of a final checkpoint.
CMC_FILE = "cmc.csv"  # rank, cmc
RANKING_FILE = "ranking.json"  # top-10 gallery rows of a few queries
MISSING_MODALITY_FILE = "missing_modality.csv"  # subset, metrics
PER_CHALLENGE_FILE = "per_challenge.csv"  # challenge, num_queries, metrics
CROSS_SPECTRAL_FILE = "cross_spectral.csv"  # query subset, gallery subset, metrics in %
ARTIFACT_FILES = (CMC_FILE, MISSING_MODALITY_FILE, PER_CHALLENGE_FILE, RANKING_FILE,
                  CROSS_SPECTRAL_FILE)
