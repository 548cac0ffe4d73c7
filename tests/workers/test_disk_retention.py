"""A LoRA run executed by the worker task (in-process, tiny model, PostgreSQL) leaves its adapter only,
no full copy; its checkpoints exist while it trains and are gone once it succeeded; sizes are recorded
for the studio."""
from pathlib import Path

import pytest

from labelapp.models import Demonstration, TrainingRun
from tests.conftest import add_member, make_project, make_prompt
from workers.simulate import simulate

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_lora_sft_run_leaves_an_adapter_and_no_checkpoints(tmp_path, settings, tiny_dir):
    from labelapp.services.disk import dir_size
    from workers.tasks import run_execute

    settings.DATA_DIR = tmp_path / "data"
    project = make_project(base_model=tiny_dir)
    add_member(project, role="admin")
    for i in range(4):
        make_prompt(project, text=f"Tell me about cats ({i}).", reference="Cats purr when they are happy.")
    simulate(project=project, annotators=2, queues=["write"])
    assert Demonstration.objects.filter(prompt__project=project).exists()
    run = TrainingRun.objects.create(project=project, kind="sft", params={
        "max_steps": 3, "per_device_batch_size": 2, "save_steps": 1, "save_total_limit": None, "max_length": 256,
        "include_pending": True})  # the simulated demonstrations are not reviewed
    seen_checkpoints = []

    from workers import executors

    original = executors.EXECUTORS["sft"]

    def watching(run, progress):
        def spy(step, total, metrics):
            seen_checkpoints.extend(p.name for p in Path(run.output_dir).glob("checkpoint-*"))
            progress(step, total, metrics)
        return original(run, spy)

    executors.EXECUTORS["sft"] = watching
    try:
        assert run_execute(run.pk) == "succeeded"
    finally:
        executors.EXECUTORS["sft"] = original
    run.refresh_from_db()
    out = Path(run.output_dir)
    assert seen_checkpoints, "the run saved no checkpoint while training: the test proves nothing"
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".tmp-checkpoint-*"))
    model = Path(run.output_model.artifact_path)
    assert model == out / "model"
    names = {p.name for p in model.iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    assert run.output_model.disk_bytes == dir_size(model) > 0
    assert run.result["disk_bytes"] == dir_size(out)
    full = (Path(tiny_dir) / "model.safetensors").stat().st_size
    assert (model / "adapter_model.safetensors").stat().st_size < full
