from django.core.management.base import BaseCommand

from labelapp.services.runs import runs_reconcile


class Command(BaseCommand):
    help = "Re-queue or fail runs whose worker stopped sending heartbeats; re-send lost messages (beat does this every 30 s)."

    def handle(self, *args, **opts):
        outcome = runs_reconcile()
        self.stdout.write(", ".join(f"{k}: {v or 'none'}" for k, v in outcome.items()))
