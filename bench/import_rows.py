"""Label import throughput on PostgreSQL: rows/s for the real OASST and HH-RLHF files.

Imports each file into a fresh project (first import: everything is created), then again (every
row is a duplicate), through labelapp.services.label_imports.labels_import, timing parse + write.
HH is imported with skip_invalid (its test splits hold ~0.5% unusable lines; they are counted).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench_import .venv/bin/python bench/import_rows.py

Target: > 1,000 rows/s. The database named by DATABASE_URL is dropped and re-created: point it
at a scratch database. SHARED_DATA_DIR overrides where the sample files are read from.
"""
from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from claim_load import recreate_database, setup_django  # noqa: E402

DATA = Path(os.environ.get("SHARED_DATA_DIR") or ROOT.parent / "shared" / "data")
FILES = [
    ("oasst", DATA / "oasst2_animal_topic_subset" / "oasst2_filtered.jsonl.gz"),
    ("hh", DATA / "hh_rlhf_test_splits" / "helpful-base.test.jsonl.gz"),
    ("hh", DATA / "hh_rlhf_test_splits" / "harmless-base.test.jsonl.gz"),
]


def main() -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")
    recreate_database(url)
    setup_django()
    from django.core.management import call_command

    from labelapp.services.label_imports import labels_import
    from labelapp.services.projects import project_create

    call_command("migrate", verbosity=0)
    warm = project_create(name="Warm-up")  # one-time costs of the process (imports, first queries)
    labels_import(project=warm, data=b'{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}', fmt="trl-pairs")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          "rows = labels in the file (rankings, demonstrations, completions)")
    print(f"{'file':28} {'run':6} {'lines':>6} {'skipped':>7} {'rows':>6} {'created':>8} {'seconds':>8} {'lines/s':>8} {'rows/s':>8}")
    for fmt, path in FILES:
        project = project_create(name=f"Bench {path.name}")
        data = path.read_bytes()
        lines = len(gzip.decompress(data).splitlines())
        for run in ("first", "again"):
            start = time.perf_counter()
            result = labels_import(project=project, data=data, fmt=fmt, skip_invalid=fmt == "hh")
            seconds = time.perf_counter() - start
            skipped = sum(1 for n in result.notes if " skipped" in n)
            created = sum(result.created.values())
            print(f"{path.name:28} {run:6} {lines:6d} {skipped:7d} {result.rows:6d} {created:8d} {seconds:8.2f} "
                  f"{lines / seconds:8.0f} {result.rows / seconds:8.0f}")


if __name__ == "__main__":
    main()
