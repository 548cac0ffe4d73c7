"""Streaming export benchmark: preference pairs as JSONL from PostgreSQL.

Seeds 4-way rankings with SQL (each gives C(4,2) = 6 pairs), starts the web server
(`manage.py runserver --noreload`, one process) and downloads
/api/v1/projects/{id}/exports/pairs/ once per size, printing records/s, time to first byte and
the server's peak RSS above its idle RSS. Flat memory shows as the same growth for every size.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench_export \
        .venv/bin/python bench/export_pairs.py --pairs 100000 1000000

The database named by DATABASE_URL is dropped and re-created.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from claim_load import recreate_database  # noqa: E402

SEED_SQL = [
    """INSERT INTO labelapp_prompt (project_id, text, messages, category, source, split, reference, content_hash,
                                    demonstration_count, created_at)
       SELECT %(project)s, 'Prompt ' || g || ': explain one useful idea about topic ' || g, NULL, 'open_qa',
              'imported', 'train', '', md5('p' || g) || md5('q' || g), 0, now()
       FROM generate_series(1, %(rankings)s) g""",
    """INSERT INTO labelapp_completion (prompt_id, text, source, model_version_id, decoding, created_at)
       SELECT p.id, 'Answer ' || k || ' to prompt ' || p.id || repeat(' with some explanation', 12), 'imported',
              NULL, '{}', now()
       FROM labelapp_prompt p CROSS JOIN generate_series(1, 4) k WHERE p.project_id = %(project)s""",
    """INSERT INTO labelapp_rankingtask (project_id, prompt_id, ranking_count, created_at)
       SELECT %(project)s, id, 1, now() FROM labelapp_prompt WHERE project_id = %(project)s""",
    """INSERT INTO labelapp_rankingtask_completions (rankingtask_id, completion_id)
       SELECT t.id, c.id FROM labelapp_rankingtask t JOIN labelapp_completion c ON c.prompt_id = t.prompt_id
       WHERE t.project_id = %(project)s""",
    """INSERT INTO labelapp_ranking (task_id, annotator_id, assignment_id, "order", none_acceptable, flags, scores,
                                     time_spent_ms, created_at)
       SELECT t.id, %(user)s, NULL,
              (SELECT jsonb_agg(jsonb_build_array(c.id) ORDER BY c.id) FROM labelapp_completion c
               WHERE c.prompt_id = t.prompt_id),
              false, '{}', '{}', 1000, now()
       FROM labelapp_rankingtask t WHERE t.project_id = %(project)s""",
]


def seed(name: str, rankings: int) -> tuple[int, str]:
    from django.contrib.auth import get_user_model
    from django.db import connection

    from labelapp.services.projects import membership_set, project_create
    from labelapp.services.tokens import api_token_create

    project = project_create(name=name, k=4)
    user = get_user_model().objects.create_user(f"exporter-{name}")
    membership_set(project=project, user=user, role="admin")
    with connection.cursor() as cursor:
        for sql in SEED_SQL:
            cursor.execute(sql, {"project": project.pk, "user": user.pk, "rankings": rankings})
        cursor.execute("ANALYZE")
    _, key = api_token_create(user=user, name="bench")
    return project.pk, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def download(url: str, key: str, pid: int) -> dict:
    import requests

    peak = [rss_mb(pid)]
    idle = peak[0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    lines = 0
    t0 = time.perf_counter()
    first = None
    with requests.get(url, headers={"Authorization": f"Token {key}"}, stream=True, timeout=3600) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=1 << 16):
            if first is None:
                first = time.perf_counter() - t0
            lines += chunk.count(b"\n")
    total = time.perf_counter() - t0
    done.set()
    watcher.join()
    return {"records": lines, "seconds": total, "ttfb": first, "idle_mb": idle, "peak_mb": peak[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")
    recreate_database(url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    projects = []
    for pairs in args.pairs:
        t0 = time.perf_counter()
        projects.append((pairs, *seed(f"export-{pairs}", pairs // 6)))
        print(f"seeded {pairs:,} pairs ({pairs // 6:,} rankings of 4) in {time.perf_counter() - t0:.0f} s", flush=True)
    port = free_port()
    env = {**os.environ, "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        # One request first, as a long-running server has already loaded its URLconf and views.
        import requests

        requests.get(f"http://127.0.0.1:{port}/api/v1/projects/", headers={"Authorization": f"Token {projects[0][2]}"})
        for _pairs, project_id, key in projects:
            r = download(f"http://127.0.0.1:{port}/api/v1/projects/{project_id}/exports/pairs/", key, server.pid)
            print(
                f"pairs {r['records']:>9,}  {r['records'] / r['seconds']:>9,.0f} records/s  "
                f"first byte {r['ttfb'] * 1000:6.0f} ms  total {r['seconds']:6.1f} s  "
                f"server RSS idle {r['idle_mb']:.0f} MB, peak {r['peak_mb']:.0f} MB (+{r['peak_mb'] - r['idle_mb']:.0f} MB)",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
