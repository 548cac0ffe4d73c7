from django.core.management.base import BaseCommand, CommandError

from labelapp.models import Project
from workers.simulate import INSTRUCTGPT_AGREEMENT, PROFILES, simulate


class Command(BaseCommand):
    help = "Label a project's waiting items with simulated annotators (same services as people)."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--annotators", type=int, default=3)
        parser.add_argument("--agreement", type=float, default=INSTRUCTGPT_AGREEMENT,
                            help="expected pairwise agreement between two simulated annotators (0.5-1]")
        parser.add_argument("--oracle", choices=["rule", "embedding"], default="rule")
        parser.add_argument("--queues", default="write,rank,compare", help="comma-separated: write, rank, compare")
        parser.add_argument("--max-labels", type=int, default=None)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--profiles", default="",
                            help=f"comma-separated, one per annotator, of {', '.join(PROFILES)} (default: all careful)")
        parser.add_argument("--interleave", action="store_true",
                            help="annotators take one item each in turn (a crowd), instead of one after another")

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {opts['project']!r}.")
        if not 0.5 < opts["agreement"] <= 1:
            raise CommandError("--agreement must be above 0.5 and at most 1.")
        queues = [q.strip() for q in opts["queues"].split(",") if q.strip()]
        if not set(queues) <= {"write", "rank", "compare"}:
            raise CommandError("--queues takes write, rank and/or compare.")
        profiles = [p.strip() for p in opts["profiles"].split(",") if p.strip()] or None
        if profiles and (len(profiles) != opts["annotators"] or not set(profiles) <= set(PROFILES)):
            raise CommandError(f"--profiles needs {opts['annotators']} comma-separated values of {', '.join(PROFILES)}.")
        report = simulate(
            project=project, annotators=opts["annotators"], agreement=opts["agreement"], oracle=opts["oracle"],
            queues=queues, max_labels=opts["max_labels"], seed=opts["seed"], profiles=profiles,
            interleave=opts["interleave"],
        )
        self.stdout.write(
            f"{report.demonstrations} demonstrations, {report.rankings} rankings, {report.comparisons} comparisons, "
            f"{report.skipped} skipped "
            f"by {', '.join(report.annotators)}"
        )
