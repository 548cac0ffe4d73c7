"""Refitting annotator reliability from a project's labels, and the per-annotator report."""
from __future__ import annotations

from unittest import mock

import pytest

from labelapp.models import Ranking, ReliabilityFit
from labelapp.selectors.quality import PairWeights, annotator_report, training_pairs
from labelapp.services.quality import ranking_task_set_gold, reliability_refit
from tests.conftest import add_member, make_project, make_prompt, make_task, make_user
from tests.labelapp.test_adjudication import ranked

pytestmark = pytest.mark.django_db

REFERENCE = "The capital of France is Paris, a city on the Seine."
TEXTS = ["The capital of France is Paris, a city on the Seine.", "The capital of France is Paris.",
         "France has a capital.", "Bananas are yellow."]  # the rule oracle's order: best to worst


def crowd_project(tasks: int, profiles: list[str], overlap: int = 3, gold: int = 0):
    from workers.simulate import simulate

    project = make_project(k=4, overlap=overlap)
    admin = add_member(project, role="admin")
    made = [make_task(project, prompt=make_prompt(project, text=f"What is the capital of France? ({i})",
                                                  reference=REFERENCE), texts=TEXTS) for i in range(tasks + gold)]
    for task in made[:gold]:
        by_text = dict(task.completions.values_list("text", "id"))
        ranking_task_set_gold(task_id=task.pk, user=admin, order=[[by_text[t]] for t in TEXTS])
    with mock.patch("labelapp.services.queue.gold_draw", return_value=0.0):  # gold first while there is any
        simulate(project=project, annotators=len(profiles), queues=["rank"], profiles=profiles, interleave=True,
                 seed=1)
    return project


def test_refit_flags_random_and_inverted_annotators_and_is_skipped_when_nothing_changed():
    profiles = ["careful"] * 6 + ["random", "random", "inverted"]
    project = crowd_project(60, profiles)
    fit = reliability_refit(project=project)
    assert fit is not None and fit.converged and fit.units == 60 * 6
    report = annotator_report(project=project)
    by_name = {row["username"].rsplit("-", 1)[1]: row for row in report["annotators"]}
    # 60 items give each annotator only ~20 rankings: the inverted one is unmistakable, a random one
    # may not be flagged yet (tests/labelapp/test_reliability.py checks recall on 300 items), but
    # nobody careful is flagged and both random annotators come out below every careful one.
    bad = {n for n, row in by_name.items() if {"likely random", "likely inverted"} & set(row["flags"])}
    assert "9" in bad and bad <= {"7", "8", "9"}
    assert by_name["9"]["flags"] == ["likely inverted"]
    assert max(by_name[n]["reliability"] for n in "78") < min(by_name[n]["reliability"] for n in "123456")
    assert {n for n, row in by_name.items() if "too fast" in row["flags"]} == {"7", "8"}  # spammers click in 2-6 s
    assert fit.iterations < 1000
    for n in "123456":
        row = by_name[n]
        assert row["reliability"] > 0.7 and row["flags"] == []
        assert row["reliability_low"] < row["reliability"] < row["reliability_high"]
        assert row["agreement_with_others"] is not None and row["labels_per_hour"] > 0
    assert by_name["9"]["reliability"] < 0.3 and by_name["9"]["agreement_with_consensus"] < 0.4
    assert reliability_refit(project=project).pk == fit.pk  # same labels: no new fit
    assert reliability_refit(project=project, force=True).pk != fit.pk
    assert ReliabilityFit.objects.filter(project=project).count() == 2


def test_gold_answers_inform_the_fit_and_the_gold_accuracy_column():
    project = crowd_project(10, ["careful", "careful", "inverted"], overlap=1, gold=3)
    fit = reliability_refit(project=project)
    assert fit.gold_units == 3 * 6
    rows = {row["username"].rsplit("-", 1)[1]: row for row in annotator_report(project=project)["annotators"]}
    assert rows["3"]["gold_items"] == 3 and rows["3"]["gold_accuracy"] < 0.3
    assert rows["1"]["gold_accuracy"] > 0.6
    assert rows["3"]["reliability"] < rows["1"]["reliability"]


def test_no_overlap_and_no_gold_means_no_fit():
    project = crowd_project(5, ["careful", "careful"], overlap=1)
    assert reliability_refit(project=project) is None
    assert annotator_report(project=project)["fit"] is None


def test_an_item_one_annotator_ranked_takes_that_annotators_reliability_when_the_fit_knows_them():
    """Overlap 1: gold tells the fit who is reliable, and every item the inverted annotator ranked alone
    is trained as probably reversed (soft labels below 0.5); an annotator with no gold and no shared
    item stays unknown — weight 1, no confidence — rather than taking the prior."""
    project = crowd_project(10, ["careful", "careful", "inverted"], overlap=1, gold=3)
    project.gold_rate = 0
    project.save()
    newcomer = add_member(project)
    alone, _ = ranked(project, [(newcomer, [0, 1, 2, 3])])
    fit = reliability_refit(project=project)
    weights = PairWeights(fit)
    assert str(newcomer.pk) not in fit.annotators and weights.weight(newcomer.pk) == 1.0
    q = {int(a): f["reliability"] for a, f in fit.annotators.items()}
    assert len(q) == 3 and sorted(v < 0.5 for v in q.values()) == [False, False, True]
    checked = 0
    for ranking in Ranking.objects.filter(task__project=project, task__gold_order__isnull=True):
        heads = [group[0] for group in ranking.order]  # one answer of each rank: strictly ordered neighbours
        for better, worse in zip(heads, heads[1:]):
            confidence = weights.confidence(ranking.task_id, better, worse)
            if ranking.task_id == alone.pk:
                assert confidence is None
                continue
            assert confidence is not None and (confidence < 0.5) == (q[ranking.annotator_id] < 0.5)
            checked += 1
    assert checked >= 10  # every non-gold item (one annotator each) has strictly ordered pairs
    soft = training_pairs(project=project, mode="soft")
    assert soft.fit_id == fit.pk
    reversed_pairs = [p for p in soft.pairs if p.weight == 0.0]  # the inverted annotator's: weight max(0, 2q - 1)
    assert reversed_pairs and all(p.confidence < 0.5 for p in reversed_pairs)
    assert all(p.confidence > 0.5 for p in soft.pairs if 0 < p.weight < 1)  # the careful ones'
    assert sum(p.confidence is None for p in soft.pairs) == 6  # the newcomer's item, trained as stated


def test_rankings_sent_without_a_time_are_reported_and_left_out_of_pace():
    """An API client that leaves out time_spent_ms: the report gives the share of such rankings, flags an
    annotator whose rankings mostly lack one "untimed", and reads pace (median, labels per hour, "too fast")
    from timed rankings only — the fast clicker stays flagged whatever their untimed rankings."""
    from labelapp.models import Queue
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim

    project = make_project(k=2, overlap=3)
    project.gold_rate = 0
    project.save()
    careful, silent, fast = (add_member(project, make_user(name)) for name in ("careful", "silent", "fast"))
    tasks = [make_task(project) for _ in range(4)]
    times = {careful: [20_000] * 4, silent: [None] * 4, fast: [1_000, 1_000, None, None]}
    for user, spent in times.items():
        for ms in spent:
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
            ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
            extra = {} if ms is None else {"time_spent_ms": ms}  # as the API does when the field is left out
            ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids], **extra)
    assert Ranking.objects.count() == 3 * len(tasks)
    rows = {row["username"]: row for row in annotator_report(project=project)["annotators"]}
    assert (rows["careful"]["untimed_share"], rows["careful"]["timed_rankings"], rows["careful"]["flags"]) == (0.0, 4, [])
    silent_row = rows["silent"]
    assert (silent_row["untimed_share"], silent_row["timed_rankings"]) == (1.0, 0)
    assert silent_row["median_time_ms"] is None and silent_row["labels_per_hour"] is None
    assert silent_row["flags"] == ["untimed"]
    fast_row = rows["fast"]
    assert (fast_row["untimed_share"], fast_row["timed_rankings"], fast_row["median_time_ms"]) == (0.5, 2, 1000)
    assert fast_row["labels_per_hour"] == pytest.approx(2 / (2_000 / 3_600_000))  # two timed rankings in 2 s
    assert fast_row["flags"] == ["too fast", "untimed"]


def test_the_quality_page_and_the_api_show_the_untimed_share():
    from django.test import Client

    from labelapp.models import Queue
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim
    from labelapp.services.tokens import api_token_create

    project = make_project(k=2, overlap=2)
    project.gold_rate = 0
    project.save()
    admin = add_member(project, make_user("boss"), role="admin")
    users = [add_member(project, make_user(name)) for name in ("timer", "quiet")]
    for _ in range(2):
        make_task(project)
    for user in users:
        for _ in range(2):
            lease = task_claim(project=project, user=user, queue=Queue.RANK)
            ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
            ranking_submit(assignment_id=lease.pk, user=user, order=[[i] for i in ids],
                           time_spent_ms=9000 if user.username == "timer" else 0)
    reliability_refit(project=project)
    _, key = api_token_create(user=admin, name="t")
    body = Client(HTTP_AUTHORIZATION=f"Token {key}").get(f"/api/v1/projects/{project.pk}/statistics/annotators/").json()
    rows = {row["username"]: row for row in body["annotators"]}
    assert (rows["quiet"]["untimed_share"], rows["quiet"]["timed_rankings"], rows["quiet"]["flags"]) == (1.0, 0, ["untimed"])
    assert (rows["timer"]["untimed_share"], rows["timer"]["timed_rankings"]) == (0.0, 2)
    client = Client()
    client.force_login(admin)
    page = client.get(f"/studio/p/{project.slug}/quality/").content.decode()
    assert "(100% untimed)" in page and "untimed</span>" in page
