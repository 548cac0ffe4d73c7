"""Create the demo project: hand-written prompts across the ten categories, hand-written
completions grouped into 4-way ranking tasks, an admin and two annotators."""
import json
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from labelapp.models import Completion, Project, Prompt, Role
from labelapp.services.projects import (
    completion_create,
    membership_set,
    project_create,
    prompt_create,
    ranking_task_create,
)

DATA = Path(__file__).resolve().parents[2] / "demo" / "demo_prompts.json"
USERS = [
    ("admin", "studio-admin-demo", Role.ADMIN),
    ("annotator1", "studio-annotator1-demo", Role.ANNOTATOR),
    ("annotator2", "studio-annotator2-demo", Role.ANNOTATOR),
]
GUIDELINES = """Write the answer the ideal assistant would give: helpful, truthful and harmless.
When ranking, put the most helpful answer first. Give equal ranks only when two answers are truly equally good.
Flag answers that are harmful, untruthful, or that ignore the instruction, whatever their rank.
Skip prompts you cannot answer well, and say why."""


class Command(BaseCommand):
    help = "Create the demo project with prompts, ranking tasks and three users (prints their passwords)."

    def add_arguments(self, parser):
        parser.add_argument("--slug", default="demo")

    def handle(self, *args, **opts):
        if settings.PRODUCTION:
            raise CommandError("The demo creates users with known passwords; it refuses to run with APP_ENV=production.")
        if Project.objects.filter(slug=opts["slug"]).exists():
            self.stdout.write(f"The demo project {opts['slug']!r} already exists; nothing changed.")
            self._print_users()
            return
        entries = json.loads(DATA.read_text(encoding="utf-8"))["prompts"]
        with transaction.atomic():
            project = project_create(name="Demo: helpful assistant", slug=opts["slug"], k=4, overlap=2, guidelines=GUIDELINES)
            User = get_user_model()
            for username, password, role in USERS:
                user = User.objects.filter(username=username).first() or User(username=username)
                user.set_password(password)
                user.is_staff = user.is_superuser = role == Role.ADMIN
                user.save()
                membership_set(project=project, user=user, role=role)
            tasks = 0
            for entry in entries:
                prompt = prompt_create(
                    project=project,
                    text=entry.get("text", ""),
                    messages=entry.get("messages"),
                    category=entry["category"],
                    source=Prompt.Source.CUSTOMER,
                    reference=entry.get("reference", ""),
                )
                if entry.get("completions"):
                    completions = [
                        completion_create(prompt=prompt, text=text, source=Completion.Source.HANDWRITTEN)
                        for text in entry["completions"]
                    ]
                    ranking_task_create(project=project, prompt=prompt, completions=completions)
                    tasks += 1
        self.stdout.write(f"Created {project.name!r}: {len(entries)} prompts, {tasks} ranking tasks (hand-written answers).")
        self._print_users()

    def _print_users(self):
        self.stdout.write("Log in at http://127.0.0.1:8000/ with:")
        for username, password, role in USERS:
            self.stdout.write(f"  {role:<10} {username:<11} password: {password}")
