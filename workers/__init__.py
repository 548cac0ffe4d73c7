"""Celery workers: thin tasks that load rows by id, call rlhf, and write through labelapp's services."""
