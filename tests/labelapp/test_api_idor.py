"""IDOR matrix generated from the URLconf: every API route that names an object, every method,
asked for an object of another project or user → 404 (or 405 where the route never accepts the
method, which reveals nothing). A new route with an object in its URL and no entry in OBJECTS
fails `test_every_object_route_is_covered`."""
import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from labelapp.models import (
    ApiToken,
    Assignment,
    Completion,
    Demonstration,
    ModelVersion,
    Project,
    PromptTemplate,
    Queue,
    Round,
    TrainingRun,
)
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.projects import completion_create, evaluation_task_create, ranking_task_create
from labelapp.services.queue import task_claim
from labelapp.services.templates import prompt_template_create
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
    template = prompt_template_create(project=project, name=f"t-{tag}", text="{question}")
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
        "assignment": lease.pk,
        "template": template.pk,
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
    "import-templated": ("project", {}),
    "template-list": ("project", {}),
    "template-preview": ("project", {}),
    "template-detail": ("template", {"project_id": "@project"}),  # "@x": the world's object x
    "export": ("project", {"kind": "pairs"}),
    "agreement": ("project", {}),
    "categories": ("project", {}),
    "annotators": ("project", {}),
    "annotators-refit": ("project", {}),
    "gold": ("project", {}),
    "run-detail": ("run", {}),
    "run-cancel": ("run", {}),
    "run-retry": ("run", {}),
    "round-detail": ("round", {}),
    "round-cancel": ("round", {}),
    "round-evaluation": ("round", {}),
    "round-start": ("project", {}),
    "modelversion-make-current": ("modelversion", {}),
    "queue-claim": ("project", {"queue": "rank"}),
    "assignment-detail": ("assignment", {}),
    "assignment-submit": ("assignment", {}),
    "assignment-skip": ("assignment", {}),
    "demonstration-review": ("demonstration", {}),
}


def test_every_object_route_is_covered():
    routes = {name for name, _ in api_routes()}
    assert routes, "no API routes found"
    missing = routes - set(OBJECTS)
    assert not missing, f"add these routes to the IDOR matrix: {sorted(missing)}"


def url_for(name, world_objects):
    from django.urls import reverse

    key, extra = OBJECTS[name]
    kwargs = {k: world_objects[v[1:]] if isinstance(v, str) and v.startswith("@") else v for k, v in extra.items()}
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
    assert Assignment.objects.get(pk=theirs["assignment"]).status == "submitted"  # not skipped
    assert Demonstration.objects.get(pk=theirs["demonstration"]).review_status == "pending"  # not reviewed
    assert PromptTemplate.objects.get(pk=theirs["template"]).version == 1  # neither edited nor deleted


# ---- roles inside one project: what an annotator may not see ---------------------------------

# routes whose objects say which model made what (or where it lives): reviewers and admins only
REVIEWER_ONLY = ["modelversion-detail", "modelversion-make-current", "run-detail", "run-cancel", "run-retry",
                 "round-detail", "round-cancel", "round-evaluation"]


@pytest.mark.parametrize("name", REVIEWER_ONLY)
def test_annotators_get_404_for_model_and_run_objects_of_their_own_project(name):
    mine = world("a")
    annotator = add_member(Project.objects.get(pk=mine["project"]), role="annotator")
    reviewer = add_member(Project.objects.get(pk=mine["project"]), role="reviewer")
    client = APIClient()
    client.force_authenticate(annotator)
    for method in METHODS:
        got = getattr(client, method)(url_for(name, mine), {}, format="json").status_code
        assert got in (404, 405), (name, method, got)
    if name.endswith("-detail") or name == "round-evaluation":
        client.force_authenticate(reviewer)  # the same URL is there for a reviewer: the 404 is the role's
        assert client.get(url_for(name, mine)).status_code == 200


MARKERS = ("secret-policy-7", "/srv/models/secret", "nucleus-secret", "secret-base")


def blind_world():
    """A project whose model versions, decoding settings and base model carry MARKERS, with a ranking
    task of model completions and a blind A/B evaluation task."""
    project = make_project(name="Blind", k=2, overlap=2, base_model="/srv/models/secret-base")
    policy = ModelVersion.objects.create(project=project, name="secret-policy-7", artifact_path="/srv/models/secret/7",
                                         metrics={"note": "secret-policy-7"})
    parent = ModelVersion.objects.create(project=project, name="secret-policy-6", artifact_path="/srv/models/secret/6")
    prompt = make_prompt(project, text="Which is the tallest mountain?")
    completions = [completion_create(prompt=prompt, text=f"Everest, answer {i}.", model_version=policy,
                                     decoding={"sampler": "nucleus-secret", "model": "secret-policy-7"}) for i in range(2)]
    ranking_task_create(project=project, prompt=prompt, completions=completions)
    evaluation_task_create(project=project, prompt=make_prompt(project, text="Name a river."), model_a=policy,
                           model_b=parent, text_a="The Nile.", text_b="The Thames.", decoding={"sampler": "nucleus-secret"})
    rnd = Round.objects.create(project=project, number=1, base_policy=parent, new_policy=policy,
                               params={"policy": {"output_dir": "/srv/models/secret/run"}})
    TrainingRun.objects.create(project=project, round=rnd, kind="ppo", status="succeeded", output_model=policy,
                               params={"model": "/srv/models/secret/6"}, result={"artifact": "/srv/models/secret/7"})
    return project


def get_everything(client, project):
    """Every GET route of the API (lists, and details of the objects the lists show) and the annotator pages."""
    from django.urls import reverse

    bodies = {}
    lists = ["project-list", "prompt-list", "completion-list", "rankingtask-list", "demonstration-list",
             "ranking-list", "modelversion-list", "token-list", "run-list", "round-list"]
    for name in lists:
        url = reverse(f"api:{name}")
        response = client.get(url)
        bodies[url] = response.content.decode()
        if response.status_code == 200:
            for obj in response.json()["results"]:
                detail = url + f"{obj['id']}/"
                bodies[detail] = client.get(detail).content.decode()
    for kind in ("pairs", "rankings"):
        url = reverse("api:export", kwargs={"project_id": project.pk, "kind": kind})
        response = client.get(url)
        bodies[url] = b"".join(response.streaming_content).decode() if response.streaming else response.content.decode()
    return bodies


def test_annotators_see_no_model_provenance_in_the_api_or_pages():
    from django.test import Client
    from django.urls import reverse

    project = blind_world()
    annotator = add_member(project, role="annotator")
    reviewer = add_member(project, role="reviewer")
    api = APIClient()
    api.force_authenticate(annotator)
    bodies = get_everything(api, project)
    bodies["completions?model_version"] = api.get(
        "/api/v1/completions/", {"model_version": ModelVersion.objects.get(name="secret-policy-7").pk}).content.decode()
    assert api.get("/api/v1/completions/", {"model_version": 1}).json()["results"] == []
    completions = api.get("/api/v1/completions/").json()["results"]
    assert len(completions) == 4 and all(set(c) == {"id", "prompt", "text", "created_at"} for c in completions)
    assert api.get("/api/v1/model-versions/").json()["results"] == []
    assert "base_model" not in api.get(f"/api/v1/projects/{project.pk}/").json()

    pages = Client()
    pages.force_login(annotator)
    rank = task_claim(project=project, user=annotator, queue=Queue.RANK)
    compare = task_claim(project=project, user=annotator, queue=Queue.COMPARE)
    for url in (reverse("labelapp:project", args=[project.slug]), reverse("labelapp:rank", args=[project.slug, rank.pk]),
                reverse("labelapp:compare", args=[project.slug, compare.pk]), reverse("labelapp:mine", args=[project.slug]),
                reverse("studio:overview", args=[project.slug])):
        bodies[url] = pages.get(url).content.decode()
    leaks = {url: marker for url, body in bodies.items() for marker in MARKERS if marker in body}
    assert not leaks, leaks

    # the same requests by a reviewer do show them: the test looks where the provenance is
    api.force_authenticate(reviewer)
    seen = "".join(get_everything(api, project).values())
    assert all(marker in seen for marker in MARKERS)
    rows = api.get("/api/v1/completions/", {"model_version": ModelVersion.objects.get(name="secret-policy-7").pk}).json()
    assert len(rows["results"]) == 3 and {"model_version", "decoding", "source"} <= set(rows["results"][0])


def test_evaluation_completion_ids_do_not_tell_candidate_from_baseline():
    project = make_project()
    new = ModelVersion.objects.create(project=project, name="new")
    old = ModelVersion.objects.create(project=project, name="old")
    candidate_first = [
        (lambda t: t.completion_a_id < t.completion_b_id)(
            evaluation_task_create(project=project, prompt=make_prompt(project), model_a=new, model_b=old,
                                   text_a="a", text_b="b"))
        for _ in range(40)
    ]
    assert 0 < sum(candidate_first) < 40


@pytest.mark.parametrize("name", sorted(n for n, (key, _) in OBJECTS.items() if key == "project"))
def test_foreign_projects_are_404_by_slug_too(name):
    from django.urls import reverse

    mine, theirs = world("c"), world("d")
    client = APIClient()
    client.force_authenticate(mine["user"])
    slug = {pk: Project.objects.get(pk=pk).slug for pk in (mine["project"], theirs["project"])}
    for method in METHODS:
        urls = []
        for world_objects in (mine, theirs):
            key, extra = OBJECTS[name]
            kwargs = {**extra, **{arg: slug[world_objects["project"]] for arg in dict(api_routes())[name] if arg not in extra}}
            urls.append(reverse(f"api:{name}", kwargs=kwargs))
        own, foreign = (getattr(client, method)(url, {}, format="json") for url in urls)
        if own.status_code == 405:
            assert foreign.status_code == 405, (name, method)
        else:
            assert own.status_code != 404, (name, method, "own project by slug")
            assert foreign.status_code == 404, (name, method, foreign.status_code)
