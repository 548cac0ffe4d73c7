"""A sampling run's seed fixes which prompts it samples, not only the samples (reproducible rounds)."""
import pytest

from labelapp.models import RankingTask, TrainingRun
from tests.conftest import make_project, make_prompt
from tests.workers.conftest import execute
from workers import executors

pytestmark = pytest.mark.django_db


def test_the_seed_fixes_the_prompts_a_sampling_run_picks(tmp_path, settings, tiny_dir):
    settings.DATA_DIR = tmp_path
    project = make_project(k=2, base_model=tiny_dir)
    for i in range(12):
        make_prompt(project, text=f"Name an animal that starts with letter number {i}.")
    make_prompt(project, text="A held-out prompt, never sampled for ranking.", split="validation")

    def picked(seed):
        before = set(RankingTask.objects.values_list("id", flat=True))
        run = TrainingRun.objects.create(project=project, kind="sample", status=TrainingRun.Status.RUNNING,
                                         params={"prompts": 4, "max_new_tokens": 2, "seed": seed})
        finished = execute(executors.run_sample, run)
        assert finished.result["prompts"] == 4 and finished.result["seed"] == seed and finished.result["tasks"] == 4
        return {t.prompt.text for t in RankingTask.objects.exclude(id__in=before).select_related("prompt")}

    first = picked(5)
    assert TrainingRun.objects.filter(kind="sample").last().result["weights_dtype"] == "float32"  # pinned in tests
    assert len(first) == 4 and all(text.startswith("Name an animal") for text in first)
    assert picked(5) == first
    assert any(picked(seed) != first for seed in (6, 7, 8))  # other seeds, other prompts (deterministic)


def test_a_sampling_run_can_sample_through_int8_weights(tmp_path, settings, tiny_dir):
    """params {"quantize": "int8"}: the policy's linear layers are quantized before sampling (CPU);
    an unknown value fails the run before any model loads, and nothing is written."""
    from unittest import mock

    from rlhf import models

    settings.DATA_DIR = tmp_path
    project = make_project(k=2, base_model=tiny_dir)
    for i in range(3):
        make_prompt(project, text=f"Name a colour, number {i}.")
    run = TrainingRun.objects.create(project=project, kind="sample",
                                     params={"prompts": 2, "max_new_tokens": 3, "seed": 1, "quantize": "int8"})
    with mock.patch.object(models, "quantize_int8", wraps=models.quantize_int8) as quantized:
        finished = execute(executors.run_sample, run)  # as the worker does: outputs stored with run_finish
    assert quantized.call_count == 1 and finished.result["tasks"] == 2 and finished.result["weights_dtype"] == "int8"
    bad = TrainingRun.objects.create(project=project, kind="sample", status=TrainingRun.Status.RUNNING,
                                     params={"prompts": 1, "max_new_tokens": 3, "seed": 2, "quantize": "int4"})
    with mock.patch.object(models, "load_causal_lm", side_effect=AssertionError("loaded")), \
            pytest.raises(ValueError, match="quantize must be one of"):
        executors.run_sample(bad, lambda *a: None)
    assert RankingTask.objects.count() == 2


def test_a_sampling_run_on_a_native_bf16_cpu_samples_from_bf16_weights(tmp_path, settings, tiny_dir, monkeypatch):
    """On a CPU that computes bf16 natively (forced with RLHF_CPU_BF16=1) the studio's sampling run loads the
    policy in bf16 and its result says so; the tasks are stored as usual."""
    settings.DATA_DIR = tmp_path
    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    project = make_project(k=2, base_model=tiny_dir)
    for i in range(3):
        make_prompt(project, text=f"Name a tree, number {i}.")
    run = TrainingRun.objects.create(project=project, kind="sample", status=TrainingRun.Status.RUNNING,
                                     params={"prompts": 2, "max_new_tokens": 3, "seed": 1})
    finished = execute(executors.run_sample, run)
    assert finished.result["weights_dtype"] == "bfloat16" and finished.result["tasks"] == 2
    assert RankingTask.objects.filter(run=finished).count() == 2
