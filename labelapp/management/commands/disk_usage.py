from django.core.management.base import BaseCommand, CommandError

from labelapp.models import Project
from labelapp.services.disk import disk_report, human, prune


class Command(BaseCommand):
    help = ("Report disk use in DATA_DIR per project, model version and run, and what can be pruned "
            "(checkpoints of finished runs; directories of failed, cancelled or discarded runs that no model "
            "version uses). Nothing is deleted without --prune.")

    def add_arguments(self, parser):
        parser.add_argument("--project", metavar="SLUG", help="only this project's runs and model versions")
        parser.add_argument("--prune", action="store_true", help="delete what the report lists as reclaimable")
        parser.add_argument("--runs", action="store_true", help="list every run directory, not only the largest")

    def handle(self, *args, **opts):
        project = None
        if opts["project"]:
            project = Project.objects.filter(slug=opts["project"]).first()
            if project is None:
                raise CommandError(f"No project with slug {opts['project']!r}.")
        report = disk_report(project)
        out = self.stdout.write
        out(f"DATA_DIR {report.data_dir}: {human(report.total)} in all, {human(report.runs_total)} in runs/")
        for entry in report.projects:
            p = entry["project"]
            out(f"\nproject {p.slug}: {human(entry['bytes'])} in {len(entry['runs'])} run directories")
            for v in entry["versions"]:
                flag = " (current)" if v.is_current else ""
                out(f"  model {v.name} [{v.kind}]{flag}: {human(v.disk_bytes)}  {v.artifact_path}")
            rows = sorted(entry["runs"], key=lambda r: -r["bytes"])
            for row in rows if opts["runs"] else rows[:10]:
                run = row["run"]
                ckpt = f", checkpoints {human(row['checkpoint_bytes'])}" if row["checkpoint_bytes"] else ""
                used = "" if row["referenced"] else ", unused"
                out(f"  run {run.pk} {run.kind} {run.status}: {human(row['bytes'])}{ckpt}{used}")
            if not opts["runs"] and len(rows) > 10:
                out(f"  … {len(rows) - 10} more (--runs lists them)")
        for row in report.unowned:
            out(f"\nrun directory without a run row: {row['path']} {human(row['bytes'])}"
                + (" (a model version uses it)" if row["referenced"] else ""))
        out("")
        if not report.plan:
            out("Nothing to prune.")
            return
        verb = "Deleting" if opts["prune"] else "Would delete"
        for item in report.plan:
            out(f"{verb} {item.path} ({human(item.bytes)}): {item.reason}")
        if not opts["prune"]:
            out(f"{human(report.reclaimable)} reclaimable; run again with --prune to delete.")
            return
        freed = prune(report.plan)
        out(self.style.SUCCESS(f"Freed {human(freed)}."))
