"""The scheduler: Celery beat ticks; each tick turns due schedules stored in Postgres into runs."""
