import json

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from labelapp.models import Project
from labelapp.services.rounds import round_start


class Command(BaseCommand):
    help = "Start a project's next round of the loop (SFT if needed → samples → … → evaluation)."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--as", dest="username", required=True, help="an admin of the project")
        parser.add_argument("--method", choices=["ppo", "dpo", "rloo", "grpo"], default="ppo")
        parser.add_argument("--params", default="{}", help='JSON, e.g. \'{"prompts": 16, "min_rankings": 16}\'')

    def handle(self, *args, **opts):
        project = Project.objects.filter(slug=opts["project"]).first()
        if project is None:
            raise CommandError(f"No project with the slug {opts['project']!r}.")
        user = get_user_model().objects.filter(username=opts["username"]).first()
        if user is None:
            raise CommandError(f"No user {opts['username']!r}.")
        try:
            params = json.loads(opts["params"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--params is not JSON: {exc}") from None
        try:
            rnd = round_start(project=project, user=user, method=opts["method"], params=params)
        except (ValidationError, PermissionDenied) as exc:
            raise CommandError("; ".join(getattr(exc, "messages", [str(exc)]))) from None
        self.stdout.write(f"Round {rnd.number} started ({rnd.method}); stage: {rnd.get_stage_display()}.")
