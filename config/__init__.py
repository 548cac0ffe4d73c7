# Load the Celery app with Django so that `send_task` uses the configured broker.
from workers.celery import app as celery_app

__all__ = ["celery_app"]
