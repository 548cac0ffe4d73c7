"""The web process through a database blip (M2): connections terminated under concurrent
submitters on gunicorn. A saved submission never answers 500; nothing answers 500 at all (a
request that loses its connection before saving gets a 503 that says to try again)."""
import threading
import time
from collections import Counter

import pytest
from django.db import connection, connections
from django.test import Client

from labelapp.models import Assignment, Ranking, RankingTask
from tests.conftest import add_member, make_project, make_task
from tests.webclient import Gunicorn, PageClient, assignment_id, database_url

SUBMITTERS = 20
APP = "studio-web-faults"


@pytest.fixture
def postgres():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: run with DATABASE_URL=postgres://…")


def terminate_web_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            [APP],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_terminated_connections_under_20_submitters_never_answer_500_on_a_saved_submit(postgres, tmp_path):
    project = make_project(name="Faults", k=2, overlap=1)
    first = make_task(project, texts=["first answer", "second answer"])
    pair = list(first.completions.all())
    tasks = RankingTask.objects.bulk_create([RankingTask(project=project, prompt=first.prompt) for _ in range(3000)])
    RankingTask.completions.through.objects.bulk_create(
        [RankingTask.completions.through(rankingtask_id=t.pk, completion_id=c.pk) for t in tasks for c in pair])
    users = [add_member(project) for _ in range(SUBMITTERS)]
    logged_in = threading.Barrier(SUBMITTERS + 1)
    env = {"DATABASE_URL": database_url(connection.settings_dict, APP), "DEBUG": "0", "LOG_LEVEL": "ERROR"}
    submits: list[tuple[int | None, int, bool | None]] = []  # (assignment id, status, saved though not 302?)
    others: Counter = Counter()
    stop = threading.Event()
    errors: list[BaseException] = []

    def annotate(user):
        try:
            client = PageClient(server.url)
            assert client.login(user.username, "pw-" + user.username).status == 302
            logged_in.wait(120)
            reply = client.claim(project.slug)
            while not stop.is_set():
                others[reply.status] += 1
                if reply.status != 302 or not assignment_id(reply.location):
                    reply = client.claim(project.slug)  # a 503 or the project page: ask again
                    continue
                path = reply.location
                page, ids = client.rank_form(path)
                others[page.status] += 1
                if page.status != 200 or not ids:
                    reply = client.claim(project.slug)
                    continue
                reply = client.submit_ranking(path, ids)
                saved_then = None
                if reply.status != 302:  # was it saved all the same? (looked up before this user retries)
                    saved_then = Assignment.objects.get(pk=assignment_id(path)).status == Assignment.Status.SUBMITTED
                submits.append((assignment_id(path), reply.status, saved_then))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    with Gunicorn(workers=2, env=env, data_dir=str(tmp_path)) as server:
        threads = [threading.Thread(target=annotate, args=(u,)) for u in users]
        for t in threads:
            t.start()
        logged_in.wait(120)
        time.sleep(2)
        killed, kills = 0, 0
        for _ in range(10):  # a kill every 0.5 s for 5 s, while the 20 submit
            killed += terminate_web_connections()
            kills += 1
            time.sleep(0.5)
        time.sleep(2)  # and the web recovers
        before = len(submits)
        time.sleep(2)
        stop.set()
        for t in threads:
            t.join(60)
        log = server.log.read_text()
    assert not errors, errors
    assert killed >= kills // 2, f"only {killed} connections terminated in {kills} rounds"  # the blips happened
    saved = set(Assignment.objects.filter(status=Assignment.Status.SUBMITTED).values_list("pk", flat=True))
    statuses = Counter(status for _, status, _ in submits)
    bad_saved = [(a, status) for a, status, saved_then in submits if saved_then]
    assert not bad_saved, (bad_saved, statuses)  # a saved submission always answered with its redirect
    assert statuses[500] == 0 and others[500] == 0, (statuses, others, log[-3000:])
    assert len(submits) - before > 0, "no submission went through after the kills"
    # every saved submission is one label within the overlap
    assert Ranking.objects.count() == len(saved)
    assert not RankingTask.objects.filter(ranking_count__gt=1).exists()


@pytest.mark.django_db
def test_a_saved_submit_whose_next_claim_fails_says_saved_and_offers_to_continue(monkeypatch, project, annotator):
    from django.db import OperationalError

    from labelapp.models import Queue
    from labelapp.pages import annotate as views
    from labelapp.services.queue import task_claim

    make_task(project)
    make_task(project)
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    ids = list(lease.ranking_task.completions.values_list("id", flat=True))

    def broken_claim(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(views, "task_claim", broken_claim)
    client = Client()
    client.force_login(annotator)
    response = client.post(f"/p/{project.slug}/rank/{lease.pk}/", {f"rank_{i}": str(n + 1) for n, i in enumerate(ids)},
                           follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "Ranking saved." in text and "press Start ranking to continue" in text
    assert 'id="start-rank"' in text  # the project page, with its button to continue
    assert Ranking.objects.filter(assignment=lease).exists()


@pytest.mark.django_db
def test_database_errors_answer_503_with_retry_after(monkeypatch, project, annotator):
    from django.db import OperationalError

    from labelapp.models import Queue
    from labelapp.pages import annotate as views

    def broken_claim(**kwargs):
        raise OperationalError("terminating connection due to administrator command")

    make_task(project)
    monkeypatch.setattr(views, "task_claim", broken_claim)
    client = Client(raise_request_exception=False)
    client.force_login(annotator)
    response = client.post(f"/p/{project.slug}/{Queue.RANK}/next/")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert "Try again" in response.content.decode()
