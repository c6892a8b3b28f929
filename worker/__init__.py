"""Celery workers: one process per GPU runs one prune job at a time and streams it into the store."""
