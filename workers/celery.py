"""The Celery app. Queues: `default` (imports, exports, statistics, bookkeeping) and `gpu`
(sampling, training, evaluation) — CPU-only hosts run `-Q default` and never pick up training.

    celery -A workers worker -Q gpu -c 1        # a training host (one job per GPU)
    celery -A workers worker -Q default         # a light host
    celery -A workers beat                      # the reconciler and round advancing
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
