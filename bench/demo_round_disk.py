"""Disk use of one demo round on CPU: DATA_DIR's size before the round and after each stage.

The data is `make demo`'s (`manage.py demo`: the demo project, its 51 hand-written prompts and users);
simulated annotators write the demonstrations and rank the samples, and the round runs with the
studio form's default settings (an empty "Advanced settings"), each run executed in this process
through the worker's own task (`workers.tasks.run_execute`, checkpoint pruning included), as
bench/round_cpu.py does. DATA_DIR is a fresh temporary directory (kept with --keep), so "before" is
what `make demo` leaves there (the converted SmolLM2-135M base model) and the rest is the round's.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench_disk REDIS_URL=redis://127.0.0.1:6379/2 \\
        flock /work/.heavy.lock nice env OMP_NUM_THREADS=2 timeout 900 .venv/bin/python bench/demo_round_disk.py

The PostgreSQL database named by DATABASE_URL is dropped and re-created. Prints, per stage, the
wall time and DATA_DIR's size, then the per-run and per-model sizes and `manage.py disk_usage`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if not p.is_symlink():
                total += p.stat().st_size
    return total


def mb(n: int) -> str:
    return f"{n / 1e6:8.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary DATA_DIR (its path is printed)")
    parser.add_argument("--method", choices=["ppo", "dpo"], default="ppo")
    parser.add_argument("--approve", action="store_true",
                        help="an admin approves the simulated demonstrations first, so the round's SFT "
                             "stage trains (without it SFT is skipped: the demonstrations are pending review)")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")
    data_dir = Path(tempfile.mkdtemp(prefix="demo-round-disk-"))
    os.environ["DATA_DIR"] = str(data_dir)
    from claim_load import recreate_database

    recreate_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from labelapp.models import ModelVersion, Project, Round, TrainingRun
    from labelapp.services.rounds import round_advance, round_start
    from workers.simulate import simulate
    from workers.tasks import run_execute

    assert Path(settings.DATA_DIR) == data_dir.resolve(), settings.DATA_DIR
    rows: list[tuple[str, float, int]] = []
    t_start = time.perf_counter()

    def mark(stage: str, t0: float) -> None:
        rows.append((stage, time.perf_counter() - t0, size(data_dir)))
        print(f"  {stage:<34} {rows[-1][1]:7.1f} s   DATA_DIR {mb(rows[-1][2])}", flush=True)

    try:
        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        call_command("demo", stdout=open(os.devnull, "w"))
        from rlhf.models import convert_bundled_model

        convert_bundled_model()  # what the first sampling/training run of `make demo` does
        mark("make demo (data + base model)", t0)
        before = rows[-1][2]
        project = Project.objects.get(slug="demo")
        admin = get_user_model().objects.get(username="admin")
        t0 = time.perf_counter()
        simulate(project=project, annotators=2, queues=["write"], oracle="rule")
        mark("simulated demonstrations", t0)
        if args.approve:
            from django.db import transaction

            from labelapp.models import Demonstration
            from labelapp.services.labels import demonstration_review

            pending = list(Demonstration.objects.filter(prompt__project=project, review_status="pending")
                           .exclude(author=admin).values_list("pk", flat=True))
            for demo_id in pending:
                with transaction.atomic():
                    demonstration_review(demonstration_id=demo_id, reviewer=admin, approve=True)
            print(f"  approved {len(pending)} demonstrations", flush=True)
        rnd = round_start(project=project, user=admin, method=args.method, params={})  # the form's defaults
        while True:
            rnd.refresh_from_db()
            if rnd.finished:
                break
            queued = list(TrainingRun.objects.filter(round=rnd, status="queued").order_by("id"))
            for run in queued:
                t0 = time.perf_counter()
                status = run_execute(run.pk)
                mark(f"{run.kind} run {run.pk} ({status})", t0)
            rnd.refresh_from_db()
            if rnd.stage == Round.Stage.RANKING:
                t0 = time.perf_counter()
                simulate(project=project, annotators=2, queues=["rank"], oracle="rule")
                mark("simulated rankings", t0)
                round_advance(round_id=rnd.pk)
            elif not queued:
                round_advance(round_id=rnd.pk)
        after = size(data_dir)
        print(f"\nround {rnd.number} ended {rnd.stage}{': ' + rnd.error if rnd.error else ''} "
              f"in {time.perf_counter() - t_start:.0f} s")
        print(f"DATA_DIR before the round {mb(before)}, after {mb(after)}: the round added {mb(after - before)}")
        print("per run directory:")
        for run in TrainingRun.objects.filter(project=project).order_by("id"):
            d = Path(run.output_dir)
            print(f"  run {run.pk:>3} {run.kind:<8} {run.status:<9} {mb(size(d)) if d.exists() else '   (none)'}")
        print("per model version:")
        for v in ModelVersion.objects.filter(project=project).order_by("id"):
            print(f"  {v.name:<40} {v.kind:<7} {mb(v.disk_bytes) if v.disk_bytes is not None else '       —'}")
        print("per top-level entry of DATA_DIR:")
        for entry in sorted(data_dir.iterdir()):
            print(f"  {entry.name:<40} {mb(size(entry) if entry.is_dir() else entry.stat().st_size)}")
        print("\nmanage.py disk_usage:")
        call_command("disk_usage")
    finally:
        if args.keep:
            print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
