"""Disk retention (labelapp.services.disk, `manage.py disk_usage`) on PostgreSQL with a real directory layout
under a temporary DATA_DIR: the report, the dry-run default, and a prune that deletes checkpoints of
finished runs and unused directories of failed, cancelled or discarded runs, but nothing a model
version (or its adapter chain) uses and nothing of a queued or running run."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from labelapp.models import ModelVersion, TrainingRun
from labelapp.services import disk
from tests.conftest import make_project

pytestmark = pytest.mark.django_db


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def _adapter(directory: Path, base: str, size: int = 1000) -> str:
    _write(directory / "adapter_model.safetensors", size)
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return str(directory)


def _run(project, status, **kw):
    return TrainingRun.objects.create(project=project, kind=kw.pop("kind", "sft"), status=status, **kw)


@pytest.fixture
def layout(settings, tmp_path):
    """Runs of every fate, each with its directory; returns (project, dict of rows/paths)."""
    settings.DATA_DIR = tmp_path / "data"
    base = tmp_path / "base"  # a full checkpoint outside DATA_DIR/runs
    _write(base / "model.safetensors", 5000)
    (base / "config.json").write_text("{}")
    project = make_project(base_model=str(base))
    root = disk.runs_root()
    r = {}

    sft = _run(project, "succeeded")
    sft_model = _adapter(root / str(sft.pk) / "model", str(base))
    _write(root / str(sft.pk) / "checkpoint-2" / "optimizer.pt", 3000)
    _write(root / str(sft.pk) / "metadata.json", 10)
    sft_version = ModelVersion.objects.create(project=project, name="sft", artifact_path=sft_model)
    sft.output_model = sft_version
    sft.save()
    r["sft"], r["sft_model"] = sft, sft_model

    # a failed run whose model/ is nevertheless the base of a kept version's adapter (chain): kept
    failed_used = _run(project, "failed")
    failed_used_model = _adapter(root / str(failed_used.pk) / "model", sft_model)
    _write(root / str(failed_used.pk) / "checkpoint-1" / "state.bin", 700)
    ppo = _run(project, "succeeded", kind="ppo")
    ppo_model = _adapter(root / str(ppo.pk) / "model", failed_used_model)
    ppo.output_model = ModelVersion.objects.create(project=project, name="ppo", artifact_path=ppo_model, parent=sft_version)
    ppo.save()
    r["failed_used"], r["ppo"] = failed_used, ppo

    failed = _run(project, "failed")
    _write(root / str(failed.pk) / "checkpoint-1" / "model.safetensors", 4000)
    cancelled = _run(project, "cancelled")
    _write(root / str(cancelled.pk) / "checkpoint-3" / "model.safetensors", 2000)
    discarded = _run(project, "succeeded", kind="dpo")  # its model version was deleted
    _adapter(root / str(discarded.pk) / "model", sft_model, 1500)
    running = _run(project, "running", kind="ppo")
    _write(root / str(running.pk) / "checkpoint-5" / "optimizer.pt", 900)
    queued = _run(project, "queued")
    _write(root / str(queued.pk) / "checkpoint-4" / "optimizer.pt", 800)
    _write(root / "999999" / "model" / "model.safetensors", 600)  # no run row
    _write(root / "notes" / "readme.txt", 50)  # not a run directory: never touched
    r.update(failed=failed, cancelled=cancelled, discarded=discarded, running=running, queued=queued)
    return project, r


def _call(*args) -> str:
    out = io.StringIO()
    call_command("disk_usage", *args, stdout=out)
    return out.getvalue()


def test_report_is_a_dry_run_by_default(layout):
    project, r = layout
    before = sorted(str(p) for p in disk.runs_root().rglob("*"))
    text = _call()
    assert sorted(str(p) for p in disk.runs_root().rglob("*")) == before  # nothing deleted
    assert f"project {project.slug}:" in text
    assert "Would delete" in text and "--prune" in text
    root = disk.runs_root()
    listed = {line.split(" (")[0].removeprefix("Would delete ") for line in text.splitlines()
              if line.startswith("Would delete")}
    assert listed == {
        str(root / str(r["sft"].pk) / "checkpoint-2"),
        str(root / str(r["failed_used"].pk) / "checkpoint-1"),
        str(root / str(r["failed"].pk)),
        str(root / str(r["cancelled"].pk)),
        str(root / str(r["discarded"].pk)),
        str(root / "999999"),
    }
    # sizes are stored on the versions for the studio
    assert ModelVersion.objects.get(name="sft").disk_bytes == 1000 + len((Path(r["sft_model"]) / "adapter_config.json").read_bytes())


def test_prune_deletes_leftovers_and_nothing_in_use(layout):
    project, r = layout
    root = disk.runs_root()
    text = _call("--prune")
    assert "Freed" in text
    for name in ("failed", "cancelled", "discarded"):
        assert not (root / str(r[name].pk)).exists()
    assert not (root / "999999").exists()
    assert not (root / str(r["sft"].pk) / "checkpoint-2").exists()
    assert not (root / str(r["failed_used"].pk) / "checkpoint-1").exists()
    # everything a model version needs is still there, chain included
    for version in ModelVersion.objects.all():
        for path in disk.adapter_chain(version.artifact_path):
            assert path.exists()
    assert (root / str(r["failed_used"].pk) / "model" / "adapter_model.safetensors").is_file()
    assert (root / str(r["sft"].pk) / "metadata.json").is_file()
    # queued and running runs keep their checkpoints (they resume from them); strangers are left alone
    assert (root / str(r["running"].pk) / "checkpoint-5").is_dir()
    assert (root / str(r["queued"].pk) / "checkpoint-4").is_dir()
    assert (root / "notes" / "readme.txt").is_file()
    assert "Nothing to prune." in _call()


def test_prune_rechecks_references_made_after_the_report(layout):
    project, r = layout
    report = disk.disk_report()
    failed_dir = disk.runs_root() / str(r["failed"].pk)
    ModelVersion.objects.create(project=project, name="rescued", artifact_path=str(failed_dir / "checkpoint-1"))
    disk.prune(report.plan)
    assert (failed_dir / "checkpoint-1" / "model.safetensors").is_file()


def test_project_filter_and_unknown_project(layout):
    project, r = layout
    other = make_project()
    text = _call("--project", other.slug)
    assert project.slug not in text and "Nothing to prune." in text
    assert f"project {project.slug}:" in _call("--project", project.slug)
    with pytest.raises(CommandError, match="No project"):
        _call("--project", "no-such-project")


def test_after_run_success_prunes_checkpoints_and_records_sizes(layout):
    project, r = layout
    root = disk.runs_root()
    sft = r["sft"]
    freed = disk.after_run_success(sft.pk)
    assert freed == 3000
    assert not (root / str(sft.pk) / "checkpoint-2").exists()
    assert (Path(r["sft_model"]) / "adapter_model.safetensors").is_file()
    sft.refresh_from_db()
    assert sft.result["disk_bytes"] == disk.dir_size(root / str(sft.pk))
    assert sft.output_model.disk_bytes == disk.dir_size(r["sft_model"])
    # not succeeded: nothing touched (PPO resumes from checkpoints)
    running = r["running"]
    assert disk.after_run_success(running.pk) == 0
    assert (root / str(running.pk) / "checkpoint-5").is_dir()


def test_studio_shows_disk_use_per_model_version(layout, client):
    from django.urls import reverse

    from tests.conftest import add_member

    project, r = layout
    disk.after_run_success(r["sft"].pk)
    admin = add_member(project, role="admin")
    client.force_login(admin)
    page = client.get(reverse("studio:overview", args=[project.slug])).content.decode()
    assert ">Disk<" in page
    from django.template.defaultfilters import filesizeformat

    assert str(filesizeformat(ModelVersion.objects.get(name="sft").disk_bytes)) in page
    status = client.get(reverse("studio:status", args=[project.slug])).json()
    by_name = {m["name"]: m["disk_text"] for m in status["models"]}
    assert by_name["sft"] == str(filesizeformat(ModelVersion.objects.get(name="sft").disk_bytes))
    assert by_name["ppo"] == "—"  # not measured yet: nothing is computed on a page view
