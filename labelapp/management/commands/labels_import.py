from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from labelapp.formats.labels import FORMATS
from labelapp.models import Project
from labelapp.services.label_imports import labels_import


class Command(BaseCommand):
    help = ("Import rankings, preference pairs, completions or demonstrations from a file (optionally gzipped). "
            "All or nothing; re-imports add no duplicates.")

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", required=True, choices=list(FORMATS))
        parser.add_argument("--skip-invalid", action="store_true", help="leave out unusable lines and list them")

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {opts['project']!r}.")
        path: Path = opts["file"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            with path.open("rb") as stream:  # read one line at a time
                result = labels_import(project=project, data=stream, fmt=opts["format"],
                                       skip_invalid=opts["skip_invalid"])
        except ValidationError as exc:
            raise CommandError("import refused, nothing was written:\n  " + "\n  ".join(exc.messages)) from None
        created = ", ".join(f"{n} {kind}" for kind, n in result.created.items() if n) or "nothing"
        duplicates = sum(result.duplicates.values())
        self.stdout.write(f"Imported {result.rows} rows into {project.slug}: created {created}; {duplicates} duplicates skipped.")
        for note in result.notes:
            self.stdout.write(f"  note: {note}")
