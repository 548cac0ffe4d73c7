import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from labelapp.formats.prompts import detect_format
from labelapp.formats.templating import CHOICES, TemplateError
from labelapp.models import Project, PromptTemplate
from labelapp.services.templates import (
    parse_field_rows,
    prompt_template_create,
    prompt_template_update,
    template_preview,
    templated_import,
)


class Command(BaseCommand):
    help = ("Prompt templates of a project: `save` one from a JSON file (created, or edited by name: the version "
            "goes up), `list` them, `preview` a row of a data file, `import` a JSONL/CSV file of rows through them.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        save = sub.add_parser("save", help="create or edit a template from a JSON object file")
        save.add_argument("project", help="project slug")
        save.add_argument("file", type=Path, help='{"name": ..., "text": ..., "few_shot": 3, ...}')
        listing = sub.add_parser("list", help="the project's templates")
        listing.add_argument("project")
        preview = sub.add_parser("preview", help="print one row of a data file rendered through a template")
        preview.add_argument("project")
        preview.add_argument("template", help="template name or id")
        preview.add_argument("file", type=Path)
        preview.add_argument("--row", type=int, default=1, help="1-based row number (default 1)")
        preview.add_argument("--format", choices=["jsonl", "csv"])
        imp = sub.add_parser("import", help="render every row of a file into prompts (all or nothing)")
        imp.add_argument("project")
        imp.add_argument("file", type=Path)
        imp.add_argument("--template", action="append", required=True, help="name or id; repeat for several")
        imp.add_argument("--choice", choices=CHOICES, default="round-robin")
        imp.add_argument("--seed", type=int, default=0)
        imp.add_argument("--category")
        imp.add_argument("--split", default="train")
        imp.add_argument("--extra-field", action="append", default=[], help="a field kept as metadata only")
        imp.add_argument("--format", choices=["jsonl", "csv"])

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {opts['project']!r}.")
        return getattr(self, "do_" + opts["action"])(project, opts)

    def _template(self, project, ref: str) -> PromptTemplate:
        qs = PromptTemplate.objects.filter(project=project)
        template = qs.filter(pk=int(ref)).first() if ref.isdigit() else qs.filter(name=ref).first()
        if template is None:
            raise CommandError(f"No template {ref!r} in {project.slug}.")
        return template

    @staticmethod
    def _file(path: Path, fmt: str | None) -> str:
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            return fmt or detect_format(path.name)
        except ValueError as exc:
            raise CommandError(str(exc)) from None

    def do_save(self, project, opts) -> None:
        try:
            spec = json.loads(opts["file"].read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CommandError(f"{opts['file']}: not a readable JSON file ({exc}).") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise CommandError("The file must hold a JSON object with at least a name and a text.")
        existing = PromptTemplate.objects.filter(project=project, name=spec["name"].strip()).first()
        try:
            if existing:
                template = prompt_template_update(project=project, template_id=existing.pk, **spec)
            else:
                template = prompt_template_create(project=project, **spec)
        except (ValidationError, TypeError) as exc:
            messages = exc.messages if isinstance(exc, ValidationError) else [str(exc)]
            raise CommandError("template refused, nothing was saved:\n  " + "\n  ".join(messages)) from None
        verb = "Updated" if existing else "Created"
        self.stdout.write(f"{verb} template {template.name!r} (id {template.pk}, version {template.version}).")

    def do_list(self, project, opts) -> None:
        for t in PromptTemplate.objects.filter(project=project):
            self.stdout.write(f"{t.pk}\t{t.name}\tv{t.version}\t{t.mode}\tfew_shot={t.few_shot}\t{t.text[:60]!r}")

    def do_preview(self, project, opts) -> None:
        template = self._template(project, opts["template"])
        fmt = self._file(opts["file"], opts["format"])
        with opts["file"].open("rb") as stream:
            rows, _, report = parse_field_rows(stream, fmt=fmt)
        if report.errors:
            raise CommandError("\n".join(report.messages))
        try:
            rendered = template_preview(template=template.as_template(), rows=rows, index=opts["row"] - 1)
        except TemplateError as exc:
            raise CommandError(str(exc)) from None
        if rendered.messages:
            for turn in rendered.messages:
                self.stdout.write(f"[{turn['role']}]\n{turn['content']}\n")
        else:
            self.stdout.write(rendered.text)
        self.stdout.write(f"(reference: {rendered.reference!r}; examples: rows {rendered.examples})")

    def do_import(self, project, opts) -> None:
        fmt = self._file(opts["file"], opts["format"])
        try:
            with opts["file"].open("rb") as stream:
                result = templated_import(
                    project=project, data=stream, fmt=fmt, template_ids=opts["template"], choice=opts["choice"],
                    seed=opts["seed"], category=opts["category"], split=opts["split"],
                    extra_fields=opts["extra_field"],
                )
        except ValidationError as exc:
            raise CommandError("import refused, nothing was written:\n  " + "\n  ".join(exc.messages)) from None
        self.stdout.write(f"Imported {result.created} prompts into {project.slug} ({result.duplicates} duplicates skipped).")
