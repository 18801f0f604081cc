"""covid-pipeline: a transfer-learning benchmark for COVID-19 vs normal chest X-rays.

The library is plain Python (no Prefect): sources → ingest → balance → folds → shards,
the model table, training, metrics and the leaderboard. ``tasks/`` and ``flows/`` wrap it.
"""

__version__ = "0.1.0"
