"""The Celery worker and the sync engine: lease → extract → plan → write batches → finalize."""
