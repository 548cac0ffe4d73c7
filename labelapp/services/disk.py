"""Disk use under DATA_DIR: what each project's model versions and runs take, and what can go.

A run writes to ``DATA_DIR/runs/<run id>/``: ``model/`` (its final model: a LoRA adapter in the
studio, a few MB; a full copy only with ``merge`` or full fine-tuning), ``checkpoint-N/`` while it
trains (what a restarted run resumes from), ``metadata.json`` and metrics. An adapter names the
checkpoint it applies to in ``adapter_config.json`` (``base_model_name_or_path``), which may be
another run's ``model/``: such a directory stays as long as any model version's chain passes
through it.

Retention: when a run succeeds its checkpoints are deleted (``after_run_success``; a run that is
queued or running keeps them, PPO and the trainers resume from them). ``prune_plan`` lists what
else can go: checkpoints left in finished runs, and whole directories of failed, cancelled or
discarded runs (and of runs whose row is gone) that no model version references.
``manage.py disk_usage`` reports and, with ``--prune``, deletes. Plain file operations only (no torch).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from labelapp.models import ModelVersion, Project, TrainingRun

log = logging.getLogger(__name__)

CHECKPOINT_PATTERNS = ("checkpoint-*", ".tmp-checkpoint-*")
MAX_CHAIN = 64


def runs_root() -> Path:
    return Path(settings.DATA_DIR) / "runs"


def dir_size(path: str | os.PathLike) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed); 0 when it does not exist."""
    p = Path(path)
    if p.is_symlink():
        return 0
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(p):
        for name in files:
            f = Path(root) / name
            try:
                if not f.is_symlink():
                    total += f.stat().st_size
            except OSError:  # removed while we walked
                pass
    return total


def human(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    root = Path(run_dir)
    if not root.is_dir():
        return []
    return sorted(p for pattern in CHECKPOINT_PATTERNS for p in root.glob(pattern) if p.is_dir() and not p.is_symlink())


def adapter_chain(path: str | os.PathLike | None) -> list[Path]:
    """``path`` and, while it is a LoRA adapter dir, the local directories it applies to (resolved)."""
    chain: list[Path] = []
    if not path:
        return chain
    p = Path(path)
    while p.is_absolute() and p.exists() and len(chain) < MAX_CHAIN:
        p = p.resolve()
        if p in chain:
            break
        chain.append(p)
        config = p / "adapter_config.json"
        if not config.is_file():
            break
        try:
            base = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            break
        if not base:
            break
        p = Path(base)
    return chain


def referenced_paths() -> set[Path]:
    """Every directory a model version (or a project's base model) needs: its artifact and its chain."""
    refs: set[Path] = set()
    paths = list(ModelVersion.objects.exclude(artifact_path="").values_list("artifact_path", flat=True))
    paths += list(Project.objects.values_list("base_model", flat=True))
    for path in paths:
        refs.update(adapter_chain(path))
    return refs


def _touches(path: Path, refs: set[Path]) -> bool:
    """Whether deleting ``path`` would delete a referenced directory, or part of one."""
    path = path.resolve()
    return any(ref == path or path in ref.parents or ref in path.parents for ref in refs)


def _run_id(directory: Path) -> int | None:
    return int(directory.name) if directory.name.isdigit() else None


# ---- after a run succeeds ---------------------------------------------------------------------------


def after_run_success(run_id: int) -> int:
    """Delete a succeeded run's checkpoints (the final model stays) and record the sizes: the run's
    directory in ``result["disk_bytes"]``, its model's artifact in ``ModelVersion.disk_bytes``.
    Returns the bytes freed. Does nothing unless the row says succeeded (PPO resumes from checkpoints)."""
    run = TrainingRun.objects.select_related("output_model").filter(pk=run_id).first()
    if run is None or run.status != TrainingRun.Status.SUCCEEDED:
        return 0
    refs = referenced_paths()
    freed = 0
    for ckpt in checkpoints(run.output_dir):
        if _touches(ckpt, refs):
            continue
        size = dir_size(ckpt)
        shutil.rmtree(ckpt, ignore_errors=True)
        freed += size
    if Path(run.output_dir).exists():
        result = {**(run.result or {}), "disk_bytes": dir_size(run.output_dir)}
        TrainingRun.objects.filter(pk=run.pk).update(result=result)
    if run.output_model is not None:
        version_measure(run.output_model)
    return freed


def version_measure(version: ModelVersion) -> int | None:
    """Store the size of a version's own artifact directory (None when it is not a local directory)."""
    path = version.artifact_path
    size = dir_size(path) if path and Path(path).is_absolute() and Path(path).exists() else None
    if size != version.disk_bytes:
        ModelVersion.objects.filter(pk=version.pk).update(disk_bytes=size)
        version.disk_bytes = size
    return size


# ---- report and prune ------------------------------------------------------------------------------


@dataclass
class Removal:
    path: Path
    bytes: int
    reason: str
    run_id: int | None = None
    project: str = ""


@dataclass
class Report:
    data_dir: Path
    total: int
    runs_total: int
    projects: list[dict] = field(default_factory=list)
    unowned: list[dict] = field(default_factory=list)  # run dirs whose row is gone
    plan: list[Removal] = field(default_factory=list)

    @property
    def reclaimable(self) -> int:
        return sum(r.bytes for r in self.plan)


FINISHED = (TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED)


def disk_report(project: Project | None = None) -> Report:
    """Sizes per project, model version and run directory, and the prune plan (nothing deleted)."""
    data_dir = Path(settings.DATA_DIR)
    root = runs_root()
    refs = referenced_paths()
    dirs = {rid: d for d in (sorted(root.iterdir()) if root.is_dir() else [])
            if d.is_dir() and not d.is_symlink() and (rid := _run_id(d)) is not None}
    runs = TrainingRun.objects.select_related("project", "output_model").filter(pk__in=list(dirs))
    if project is not None:
        runs = runs.filter(project=project)
    by_project: dict[int, dict] = {}

    def entry(p: Project) -> dict:
        return by_project.setdefault(p.pk, {"project": p, "bytes": 0, "runs": [], "versions": []})

    plan: list[Removal] = []
    seen: set[int] = set()
    for run in runs.order_by("pk"):
        seen.add(run.pk)
        directory = dirs[run.pk]
        size = dir_size(directory)
        ckpts = checkpoints(directory)
        ckpt_bytes = {c: dir_size(c) for c in ckpts}
        row = {"run": run, "path": directory, "bytes": size, "checkpoint_bytes": sum(ckpt_bytes.values()),
               "referenced": _touches(directory, refs)}
        e = entry(run.project)
        e["runs"].append(row)
        e["bytes"] += size
        if run.status not in FINISHED:
            continue  # queued or running: it may resume from its checkpoints
        if not row["referenced"]:
            reason = {TrainingRun.Status.FAILED: "failed run", TrainingRun.Status.CANCELLED: "cancelled run"}.get(
                run.status, "succeeded run that no model version uses (discarded, or it trained nothing)")
            plan.append(Removal(directory, size, reason, run.pk, run.project.slug))
            continue
        for c, b in ckpt_bytes.items():
            if not _touches(c, refs):
                plan.append(Removal(c, b, f"checkpoint of a {run.status} run", run.pk, run.project.slug))
    unowned = []
    if project is None:
        for rid, directory in dirs.items():
            if rid in seen:
                continue
            size = dir_size(directory)
            referenced = _touches(directory, refs)
            unowned.append({"path": directory, "bytes": size, "referenced": referenced})
            if not referenced:
                plan.append(Removal(directory, size, "no run row"))
    versions = ModelVersion.objects.select_related("project").order_by("project_id", "-created_at")
    if project is not None:
        versions = versions.filter(project=project)
    for version in versions:
        if version.project is None:
            continue
        version_measure(version)
        entry(version.project)["versions"].append(version)
    return Report(data_dir, dir_size(data_dir), dir_size(root),
                  sorted(by_project.values(), key=lambda e: e["project"].slug), unowned, plan)


def prune(plan: list[Removal]) -> int:
    """Delete what the plan lists, re-checking each path against the references first. Returns bytes freed."""
    root = runs_root().resolve()
    refs = referenced_paths()
    freed = 0
    for item in plan:
        path = item.path
        if path.is_symlink() or not path.exists():
            continue
        resolved = path.resolve()
        if root not in resolved.parents:
            raise ValueError(f"refusing to delete {path}: not under {root}")
        if _touches(resolved, refs):
            log.warning("not deleting %s: a model version now uses it", path)
            continue
        if item.run_id is not None:
            status = TrainingRun.objects.filter(pk=item.run_id).values_list("status", flat=True).first()
            if status is not None and status not in FINISHED:
                continue  # re-queued since the plan was made
        freed += dir_size(resolved)
        shutil.rmtree(resolved)
    return freed
