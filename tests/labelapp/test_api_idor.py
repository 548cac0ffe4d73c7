"""IDOR matrix generated from the URLconf: every API route that names an object, every method,
asked for an object of another project or user → 404 (or 405 where the route never accepts the
method, which reveals nothing). A new route with an object in its URL and no entry in OBJECTS
fails `test_every_object_route_is_covered`."""
import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from labelapp.models import ApiToken, Completion, ModelVersion, Queue, Round, TrainingRun
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db

METHODS = ["get", "put", "patch", "delete", "post"]


def api_routes():
    """(route name, keyword arguments) of every /api/v1/ pattern that names an object."""
    found = []

    def walk(patterns, namespace):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, p.namespace or namespace)
            elif isinstance(p, URLPattern) and namespace == "api" and p.pattern.regex.groupindex:
                found.append((p.name, sorted(p.pattern.regex.groupindex)))

    walk(get_resolver().url_patterns, None)
    return found


def world(tag):
    """A project with one object of every kind, labelled by its admin-annotator."""
    project = make_project(name=f"World {tag}", k=2)
    admin = add_member(project, make_user(f"admin_{tag}"), role="admin")
    prompt = make_prompt(project)
    task = make_task(project)
    lease = task_claim(project=project, user=admin, queue=Queue.RANK)
    ids = list(lease.ranking_task.completions.values_list("id", flat=True))
    ranking = ranking_submit(assignment_id=lease.pk, user=admin, order=[ids])
    write = task_claim(project=project, user=admin, queue=Queue.WRITE)
    demonstration = demonstration_submit(assignment_id=write.pk, user=admin, text="demo")
    version = ModelVersion.objects.create(project=project, name=f"v-{tag}")
    token = ApiToken.objects.create(user=admin, name="t", prefix=f"rs_{tag}", digest=tag * 64)
    rnd = Round.objects.create(project=project, number=1)
    run = TrainingRun.objects.create(project=project, round=rnd, kind="sft", status="failed")
    return {
        "user": admin,
        "project": project.pk,
        "prompt": prompt.pk,
        "completion": Completion.objects.filter(prompt__project=project).first().pk,
        "rankingtask": task.pk,
        "ranking": ranking.pk,
        "demonstration": demonstration.pk,
        "modelversion": version.pk,
        "token": token.pk,
        "round": rnd.pk,
        "run": run.pk,
    }


# route name → (which object of the world, extra URL kwargs)
OBJECTS = {
    "project-detail": ("project", {}),
    "prompt-detail": ("prompt", {}),
    "completion-detail": ("completion", {}),
    "rankingtask-detail": ("rankingtask", {}),
    "ranking-detail": ("ranking", {}),
    "demonstration-detail": ("demonstration", {}),
    "modelversion-detail": ("modelversion", {}),
    "token-detail": ("token", {}),
    "import-prompts": ("project", {}),
    "import-labels": ("project", {}),
    "export": ("project", {"kind": "pairs"}),
    "agreement": ("project", {}),
    "run-detail": ("run", {}),
    "run-cancel": ("run", {}),
    "run-retry": ("run", {}),
    "round-detail": ("round", {}),
    "round-cancel": ("round", {}),
    "round-evaluation": ("round", {}),
    "round-start": ("project", {}),
    "modelversion-make-current": ("modelversion", {}),
}


def test_every_object_route_is_covered():
    routes = {name for name, _ in api_routes()}
    assert routes, "no API routes found"
    missing = routes - set(OBJECTS)
    assert not missing, f"add these routes to the IDOR matrix: {sorted(missing)}"


def url_for(name, world_objects):
    from django.urls import reverse

    key, extra = OBJECTS[name]
    kwargs = dict(extra)
    for arg in dict(api_routes())[name]:
        if arg not in kwargs:
            kwargs[arg] = world_objects[key]
    return reverse(f"api:{name}", kwargs=kwargs)


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_foreign_objects_are_404_on_every_method(name):
    mine, theirs = world("a"), world("b")
    client = APIClient()
    client.force_authenticate(mine["user"])
    for method in METHODS:
        own = getattr(client, method)(url_for(name, mine), {}, format="json")
        foreign = getattr(client, method)(url_for(name, theirs), {}, format="json")
        if own.status_code == 405:
            assert foreign.status_code == 405, (name, method)  # the route never takes this method
        else:
            assert foreign.status_code == 404, (name, method, foreign.status_code)
    assert ApiToken.objects.get(pk=theirs["token"]).revoked_at is None
    assert TrainingRun.objects.filter(project_id=theirs["project"]).count() == 1  # no retry was created
    assert Round.objects.get(pk=theirs["round"]).stage == "sft"  # not cancelled
