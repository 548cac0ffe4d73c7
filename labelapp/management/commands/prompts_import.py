from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from labelapp.formats.prompts import detect_format
from labelapp.models import Project
from labelapp.services.projects import prompts_import


class Command(BaseCommand):
    help = "Import prompts from a JSONL or CSV file (optionally gzipped). All or nothing; re-imports add no duplicates."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name")

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {opts['project']!r}.")
        path: Path = opts["file"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            fmt = opts["format"] or detect_format(path.name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        try:
            with path.open("rb") as stream:  # read one line at a time
                result = prompts_import(project=project, data=stream, fmt=fmt)
        except ValidationError as exc:
            raise CommandError("import refused, nothing was written:\n  " + "\n  ".join(exc.messages)) from None
        self.stdout.write(f"Imported {result.created} prompts into {project.slug} ({result.duplicates} duplicates skipped).")
