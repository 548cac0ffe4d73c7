import pytest
from django.urls import reverse

from labelapp.models import Demonstration, Queue, Ranking
from labelapp.services.labels import ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user

pytestmark = pytest.mark.django_db

XSS = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1"><a href="javascript:alert(1)">click</a>'


@pytest.fixture
def client_for(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def test_pages_need_login(client, project):
    response = client.get(reverse("labelapp:project", args=[project.slug]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_project_home_shows_queues_guidelines_and_csp(client_for, annotator):
    project = annotator.memberships.get().project
    project.guidelines = "Be helpful.\nBe honest."
    project.save()
    make_task(project)
    response = client_for(annotator).get(reverse("labelapp:project", args=[project.slug]))
    body = response.content.decode()
    assert response.status_code == 200
    assert 'data-testid="waiting-rank">1<' in body and 'data-testid="waiting-write">1<' in body
    assert "<p>Be helpful.<br>\nBe honest.</p>" in body  # markdown, line breaks kept
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert "<script>" not in body.split('id="keymap"')[0].split("</head>")[1]  # no inline script in the body


def test_other_projects_are_invisible(client_for, annotator):
    other = make_project()
    make_task(other)
    c = client_for(annotator)
    assert c.get(reverse("labelapp:project", args=[other.slug])).status_code == 404
    assert c.post(reverse("labelapp:claim", args=[other.slug, "rank"])).status_code == 404


def test_get_never_claims(client_for, project, annotator):
    make_task(project)
    client_for(annotator).get(reverse("labelapp:project", args=[project.slug]))
    assert not annotator.assignments.exists()


def test_write_flow_with_errors_kept_on_the_page(client_for, project, annotator):
    make_prompt(project, text="Explain " + XSS)
    c = client_for(annotator)
    response = c.post(reverse("labelapp:claim", args=[project.slug, "write"]))
    url = response["Location"]
    page = c.get(url).content.decode()
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and "<img src=x" not in page
    bad = c.post(url, {"text": "   "})
    assert bad.status_code == 400 and "empty" in bad.content.decode()
    ok = c.post(url, {"text": "A demonstration.", "time_spent_ms": "4200"})
    assert ok.status_code == 302
    demo = Demonstration.objects.get()
    assert demo.text == "A demonstration." and demo.time_spent_ms == 4200
    # resubmitting the same form stores nothing new
    assert c.post(url, {"text": "A demonstration."}).status_code == 302
    assert Demonstration.objects.count() == 1


def test_rank_flow_errors_then_success(client_for, project, annotator):
    task = make_task(project, texts=["one", XSS, "three", "four"])
    c = client_for(annotator)
    url = c.post(reverse("labelapp:claim", args=[project.slug, "rank"]))["Location"]
    page = c.get(url).content.decode()
    assert "&lt;img src=x onerror=" in page and "<img src=x" not in page
    ids = sorted(task.completions.values_list("id", flat=True))
    partial = c.post(url, {f"rank_{ids[0]}": "1"})
    assert partial.status_code == 400 and "Give every response a rank" in partial.content.decode()
    assert 'value="1"' in partial.content.decode()  # what was typed is kept
    form = {f"rank_{cid}": str(n) for n, cid in enumerate(ids, start=1)}
    form.update({f"flag_{ids[3]}": ["untruthful", "harmful"], f"score_{ids[0]}": "6", "time_spent_ms": "900"})
    assert c.post(url, form).status_code == 302
    ranking = Ranking.objects.get()
    assert ranking.order == [[i] for i in ids]
    assert ranking.flags == {str(ids[3]): ["harmful", "untruthful"]} and ranking.scores == {str(ids[0]): 6}


def test_completion_order_is_shuffled_per_annotator_and_stable(client_for, project):
    from labelapp.selectors.labels import completions_for_annotator

    task = make_task(project, texts=[f"answer {i}" for i in range(9)])
    users = [add_member(project) for _ in range(6)]
    orders = [tuple(c.pk for c in completions_for_annotator(task_id=task.pk, user=u)) for u in users]
    assert len(set(orders)) > 1
    assert orders[0] == tuple(c.pk for c in completions_for_annotator(task_id=task.pk, user=users[0]))


def test_annotator_never_sees_other_annotators_rankings(client_for):
    project = make_project(overlap=2)
    first, second = add_member(project), add_member(project)
    task = make_task(project)
    lease = task_claim(project=project, user=first, queue=Queue.RANK)
    ids = list(task.completions.values_list("id", flat=True))
    ranking_submit(assignment_id=lease.pk, user=first, order=[ids], time_spent_ms=777)
    c = client_for(second)
    mine = c.get(reverse("labelapp:mine", args=[project.slug])).content.decode()
    assert "None yet." in mine and "rank groups" not in mine
    url = c.post(reverse("labelapp:claim", args=[project.slug, "rank"]))["Location"]
    page = c.get(url).content.decode()
    assert 'value="1"' not in page  # no ranks pre-filled from someone else
    # and the first annotator's lease page is not reachable by the second
    assert c.get(reverse("labelapp:rank", args=[project.slug, lease.pk])).status_code == 404


def test_review_page_requires_reviewer(client_for, project, annotator, reviewer):
    assert client_for(annotator).get(reverse("labelapp:review", args=[project.slug])).status_code == 404
    assert client_for(reviewer).get(reverse("labelapp:review", args=[project.slug])).status_code == 200


def test_review_flow(client_for, project, annotator, reviewer):
    from labelapp.services.labels import demonstration_submit

    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    demo = demonstration_submit(assignment_id=lease.pk, user=annotator, text="Draft answer")
    c = client_for(reviewer)
    url = reverse("labelapp:review", args=[project.slug])
    refused = c.post(url, {"demonstration_id": demo.pk, "decision": "reject", "comment": ""})
    assert refused.status_code == 400 and "needs a comment" in refused.content.decode()
    assert c.post(url, {"demonstration_id": demo.pk, "decision": "reject", "comment": "Cite a source."}).status_code == 302
    demo.refresh_from_db()
    assert demo.review_status == "rejected" and demo.review_comment == "Cite a source."


def test_a_review_of_an_answer_edited_since_the_page_opened_is_refused(client_for, project, annotator, reviewer):
    """The page sends the hash of the text the reviewer read; an edit in between refuses the decision and
    shows the new text to decide on."""
    from labelapp.services.label_changes import demonstration_edit
    from labelapp.services.labels import demonstration_submit, text_sha256

    make_prompt(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.WRITE)
    demo = demonstration_submit(assignment_id=lease.pk, user=annotator, text="Draft answer")
    c = client_for(reviewer)
    url = reverse("labelapp:review", args=[project.slug])
    page = c.get(url).content.decode()
    seen = text_sha256("Draft answer")
    assert f'name="text_sha256" value="{seen}"' in page
    demonstration_edit(demonstration_id=demo.pk, user=annotator, text="A different answer, never read")
    refused = c.post(url, {"demonstration_id": demo.pk, "decision": "approve", "text_sha256": seen})
    body = refused.content.decode()
    assert refused.status_code == 400 and "edited this answer after you opened it" in body
    assert "A different answer, never read" in body and text_sha256("A different answer, never read") in body
    demo.refresh_from_db()
    assert demo.review_status == "pending" and demo.reviewer is None
    fresh = text_sha256("A different answer, never read")
    assert c.post(url, {"demonstration_id": demo.pk, "decision": "approve", "text_sha256": fresh}).status_code == 302
    demo.refresh_from_db()
    assert demo.review_status == "approved"


def test_skip_write_needs_reason(client_for, project, annotator):
    make_prompt(project)
    c = client_for(annotator)
    url = c.post(reverse("labelapp:claim", args=[project.slug, "write"]))["Location"]
    lease = annotator.assignments.get()
    skip_url = reverse("labelapp:skip", args=[project.slug, "write", lease.pk])
    c.post(skip_url, {"reason": ""})
    lease.refresh_from_db()
    assert lease.status == "active"
    c.post(skip_url, {"reason": "needs a lawyer"})
    lease.refresh_from_db()
    assert lease.status == "skipped" and lease.skip_reason == "needs a lawyer"
    assert url


def test_single_project_home_redirects(client_for, annotator):
    response = client_for(annotator).get(reverse("labelapp:home"))
    assert response.status_code == 302


def test_superuser_sees_every_project(client_for):
    admin = make_user(is_superuser=True, is_staff=True)
    make_project(), make_project()
    response = client_for(admin).get(reverse("labelapp:home"))
    assert response.status_code == 200 and response.content.decode().count('href="/p/') == 2
