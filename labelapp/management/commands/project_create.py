from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from labelapp.services.projects import project_create


class Command(BaseCommand):
    help = "Create a labeling project."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--slug", default="")
        parser.add_argument("--k", type=int, default=4, help="completions per ranking task (2-9)")
        parser.add_argument("--overlap", type=int, default=1, help="annotators per ranking task")
        parser.add_argument("--demonstrations-per-prompt", type=int, default=1)
        parser.add_argument("--guidelines-file", type=Path, help="plain-text guidelines shown to annotators")
        parser.add_argument("--categories", default="",
                            help="comma-separated prompt categories (default: InstructGPT's ten)")

    def handle(self, *args, **opts):
        guidelines = opts["guidelines_file"].read_text(encoding="utf-8") if opts["guidelines_file"] else ""
        try:
            project = project_create(
                name=opts["name"],
                slug=opts["slug"],
                k=opts["k"],
                overlap=opts["overlap"],
                demonstrations_per_prompt=opts["demonstrations_per_prompt"],
                guidelines=guidelines,
                categories=[c.strip() for c in opts["categories"].split(",") if c.strip()] or None,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Created project {project.name!r} (slug {project.slug}).")
