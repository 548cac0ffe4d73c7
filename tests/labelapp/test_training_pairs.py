"""Training on consensus: the pairs a reward-model or DPO run reads (labelapp.selectors.quality.training_pairs) —
gold left out, disputes replaced by their adjudication, reliability weights and confidences for the
run's label_weights, AI labels mixed in only at the project's ai_label_weight."""
from __future__ import annotations

import json

import pytest

from labelapp.formats.exports import ExportFilter, export_pairs
from labelapp.models import ModelVersion
from labelapp.selectors.quality import PairWeights, training_pairs
from labelapp.services.quality import (
    ai_label_record,
    ranking_task_adjudicate,
    ranking_task_set_gold,
    reliability_refit,
)
from tests.conftest import add_member, make_project, make_task
from tests.labelapp.test_adjudication import ranked

pytestmark = pytest.mark.django_db


@pytest.fixture
def crowd():
    """Three annotators on three tasks (overlap 3): one agreed task, one where c reverses a and b, and
    one disputed task a reviewer decides; plus a gold task nobody ranks."""
    project = make_project(k=3, overlap=3)
    project.gold_rate = 0
    project.save()
    a, b, c = (add_member(project) for _ in range(3))
    admin = add_member(project, role="admin")
    reviewer = add_member(project, role="reviewer")
    agreed, agreed_ids = ranked(project, [(a, [0, 1, 2]), (b, [0, 1, 2]), (c, [0, 1, 2])])
    split, split_ids = ranked(project, [(a, [0, 1, 2]), (b, [0, 1, 2]), (c, [2, 1, 0])])
    disputed, disputed_ids = ranked(project, [(a, [0, 1, 2]), (b, [2, 1, 0]), (c, [2, 0, 1])])
    decision = ranking_task_adjudicate(task_id=disputed.pk, reviewer=reviewer,
                                       order=[[disputed_ids[1]], [disputed_ids[0]], [disputed_ids[2]]])
    gold = make_task(project)
    gold_ids = sorted(gold.completions.values_list("id", flat=True))
    ranking_task_set_gold(task_id=gold.pk, user=admin, order=[[i] for i in gold_ids])
    return dict(project=project, a=a, b=b, c=c, agreed=agreed, split=split, split_ids=split_ids,
                disputed=disputed, decision=decision, gold=gold, gold_ids=gold_ids)


def test_gold_left_out_and_the_decision_replaces_the_disputed_rankings(crowd):
    selected = training_pairs(project=crowd["project"])
    assert selected.mode == "none" and selected.fit_id is None
    assert len(selected.rankings) == 6 and selected.adjudications == [crowd["decision"].pk]
    sources = [p.source for p in selected.pairs]
    assert sources.count("human") == 6 * 3 and sources.count("adjudication") == 3 and "ai" not in sources
    assert all(p.weight == 1.0 and p.confidence is None for p in selected.pairs)  # "none": nothing to weigh
    assert selected.lineage() == {"pair_sources": {"adjudication": 3, "human": 18}, "reliability_fit": None}


def test_min_confidence_without_weighting_drops_what_the_export_drops(crowd):
    """label_weights "none" with min_confidence: the pairs carry their confidence (so the trainer's filter
    can act) but keep weight 1; the trainer keeps exactly the pairs the export with the same threshold keeps."""
    from rlhf.data import PreferencePair
    from rlhf.weighting import select_pairs

    project = crowd["project"]
    fit = reliability_refit(project=project)
    selected = training_pairs(project=project, mode="none", min_confidence=0.5)
    assert selected.mode == "none" and selected.fit_id == fit.pk
    assert all(p.weight == 1.0 for p in selected.pairs)
    assert any(p.confidence is not None and p.confidence < 0.5 for p in selected.pairs)  # c's reversed pairs
    kept = select_pairs([PreferencePair(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, weight=p.weight,
                                        confidence=p.confidence) for p in selected.pairs],
                        mode="none", min_confidence=0.5)
    assert 0 < len(kept) < len(selected.pairs)
    lines = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project), min_confidence=0.5)).splitlines()]
    assert sorted((x["chosen"].strip(), x["rejected"].strip()) for x in lines) == sorted((p.chosen, p.rejected) for p in kept)
    assert all(p.confidence is None for p in training_pairs(project=project, mode="none").pairs)  # no threshold: as before


@pytest.mark.parametrize("mode", ["weight", "soft"])
def test_weights_and_confidences_come_from_the_latest_fit(crowd, mode):
    project = crowd["project"]
    fit = reliability_refit(project=project)
    selected = training_pairs(project=project, mode=mode)
    weights = PairWeights(fit)
    assert selected.fit_id == fit.pk and selected.mode == mode
    human = [p for p in selected.pairs if p.source == "human"]
    # c reversed the others on the split task: the fit trusts c less, so c's pairs weigh less
    assert weights.weight(crowd["c"].pk) < weights.weight(crowd["a"].pk)
    assert sorted({p.weight for p in human}) == sorted({weights.weight(u.pk) for u in (crowd["a"], crowd["b"], crowd["c"])})
    # every human pair's confidence is the posterior of its own order (c's reversed pairs below 0.5)
    reversed_by_c = [p for p in human if p.weight == weights.weight(crowd["c"].pk) and p.confidence < 0.5]
    assert len(reversed_by_c) == 3
    decided = [p for p in selected.pairs if p.source == "adjudication"]
    assert len(decided) == 3 and all(p.weight == 1.0 and p.confidence == 1.0 for p in decided)
    # the pairs export with weights=1 gives a model trained outside the studio the same numbers
    lines = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project), weights=True)).splitlines()]
    exported = sorted((x["chosen"].strip(), x["rejected"].strip(), x["weight"], x["confidence"]) for x in lines)
    assert exported == sorted((p.chosen, p.rejected, p.weight, p.confidence) for p in selected.pairs)


def test_ai_labels_only_at_their_weight_never_on_gold_and_the_latest_per_task(crowd):
    project = crowd["project"]
    version = ModelVersion.objects.create(project=project, name="rm-1", kind="reward")
    later = ModelVersion.objects.create(project=project, name="rm-2", kind="reward")
    ids = crowd["split_ids"]
    ai_label_record(task_id=crowd["split"].pk, source="reward_model", model_version_id=version.pk,
                    order=[[ids[2]], [ids[1]], [ids[0]]], scores={})
    newest = ai_label_record(task_id=crowd["split"].pk, source="reward_model", model_version_id=later.pk,
                             order=[[ids[0]], [ids[1], ids[2]]], scores={})
    g = crowd["gold_ids"]
    ai_label_record(task_id=crowd["gold"].pk, source="reward_model", model_version_id=version.pk,
                    order=[[g[2]], [g[1]], [g[0]]], scores={})
    assert [p for p in training_pairs(project=project).pairs if p.source == "ai"] == []  # weight 0: off

    project.ai_label_weight = 0.25
    project.save()
    selected = training_pairs(project=project)
    ai = [p for p in selected.pairs if p.source == "ai"]
    assert selected.mode == "weight" and selected.ai_labels == [newest.pk]  # the gold task's label never trains
    texts = {c.pk: c.text for c in crowd["split"].completions.all()}
    assert {(p.chosen, p.rejected) for p in ai} == {(texts[ids[0]], texts[ids[1]]), (texts[ids[0]], texts[ids[2]])}
    assert all(p.weight == 0.25 and p.confidence is None for p in ai)
    assert all(p.weight == 1.0 for p in selected.pairs if p.source != "ai")  # "none" asked: people count fully
    assert selected.lineage()["ai_label_weight"] == 0.25

    soft = training_pairs(project=project, mode="soft")
    assert soft.mode == "soft" and not soft.ai_labels and "soft" in soft.lineage()["ai_labels_left_out"]


def test_a_task_with_more_rankings_than_a_page_is_read_whole(monkeypatch):
    """Rankings are read in keyset pages by task: a task whose rankings fill a whole page (many annotators,
    a former gold item) used to lose the rest of them in both the export and training."""
    from labelapp.formats import exports

    monkeypatch.setattr(exports, "FIRST_CHUNK", 3)
    monkeypatch.setattr(exports, "CHUNK", 3)
    project = make_project(k=3, overlap=5)
    project.gold_rate = 0
    project.save()
    users = [add_member(project) for _ in range(5)]
    crowded, _ = ranked(project, [(u, [0, 1, 2]) for u in users])
    after, _ = ranked(project, [(u, [2, 1, 0]) for u in users[:2]])
    selected = training_pairs(project=project)
    assert len(selected.rankings) == 7 and len(selected.pairs) == 7 * 3
    rows = [json.loads(x) for x in b"".join(exports.export_rankings(ExportFilter(project=project))).splitlines()]
    assert sorted(r["task_id"] for r in rows) == [crowded.pk] * 5 + [after.pk] * 2


def test_validation_prompts_stay_out_of_training_but_not_out_of_the_export():
    """Reward and DPO runs read the training split only, as SFT and PPO do: the validation prompts are what the
    evaluation and the promotion gate judge a policy on. The export keeps every split unless asked."""
    from labelapp.models import Queue
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim
    from tests.conftest import make_prompt

    project = make_project(k=3, overlap=1)
    project.gold_rate, project.ai_label_weight = 0, 0.5
    project.save()
    a = add_member(project)
    trained, _ = ranked(project, [(a, [0, 1, 2])])
    held = make_task(project, make_prompt(project, split="validation"))
    lease = task_claim(project=project, user=a, queue=Queue.RANK)
    assert lease.ranking_task_id == held.pk
    ids = sorted(held.completions.values_list("id", flat=True))
    ranking_submit(assignment_id=lease.pk, user=a, order=[[i] for i in ids])
    version = ModelVersion.objects.create(project=project, name="rm", kind="reward")
    ai_label_record(task_id=held.pk, source="reward_model", model_version_id=version.pk, order=[[i] for i in ids],
                    scores={})
    selected = training_pairs(project=project)
    assert [p.source for p in selected.pairs] == ["human"] * 3 and selected.ai_labels == []
    assert selected.rankings == list(trained.rankings.values_list("id", flat=True))
    rows = [json.loads(x) for x in b"".join(export_pairs(ExportFilter(project=project))).splitlines()]
    assert len(rows) == 6  # both tasks' pairs
