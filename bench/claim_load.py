"""Load benchmark of the assignment queue on PostgreSQL.

N simulated annotators loop claim → submit against one project holding T ranking tasks, for D
seconds, pausing a random think time (exponential, mean --think-ms; 0 = hammer the server)
between labels. Prints the latency percentiles of each call, throughput, errors, and checks that
no task went past its overlap and no annotator got a task twice.

Two ways in:

- `--via services` (default): each annotator is a process calling the services directly, with
  its own database connection (the queue's own cost);
- `--via pages`: the annotators use the HTML pages of a real gunicorn server, like a browser
  without JavaScript (tests/webclient.py): log in, open the rank page, submit the form (whose
  redirect claims the next item). Latency is measured per HTTP request; the load average of the
  machine is printed beside the numbers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench \
        .venv/bin/python bench/claim_load.py --tasks 100000 --annotators 50 --seconds 30
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench \
        .venv/bin/python bench/claim_load.py --via pages --annotators 50 --seconds 60 --workers 4

Target (issue 2): p95 < 50 ms, 0 errors, no over-assignment. The database named by
DATABASE_URL is dropped and re-created: point it at a scratch database.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


PASSWORD = "load-test-password"


def setup_django():
    import django

    django.setup()


def recreate_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1].split("?")[0]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def seed(tasks: int, annotators: int, overlap: int) -> tuple[int, list[int]]:
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from labelapp.models import Completion, Prompt, RankingTask
    from labelapp.services.projects import completion_create, membership_set, project_create, prompt_create

    call_command("migrate", verbosity=0)
    project = project_create(name="Load", slug="load", k=2, overlap=overlap)
    prompt = prompt_create(project=project, text="Which answer is better?")
    completions = [completion_create(prompt=prompt, text=t, source=Completion.Source.HANDWRITTEN) for t in "AB"]
    created = RankingTask.objects.bulk_create(
        [RankingTask(project=project, prompt=prompt) for _ in range(tasks)], batch_size=5000
    )
    through = RankingTask.completions.through
    through.objects.bulk_create(
        [through(rankingtask_id=t.pk, completion_id=c.pk) for t in created for c in completions], batch_size=10000
    )
    from django.contrib.auth.hashers import make_password

    User = get_user_model()
    password = make_password(PASSWORD)  # one hash for all: hashing 50 times would only slow the seed
    users = User.objects.bulk_create([User(username=f"load{i}", password=password) for i in range(annotators)])
    for user in users:
        membership_set(project=project, user=user, role="annotator")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    assert Prompt.objects.count() == 1
    return project.pk, [u.pk for u in users]


def annotator(project_id: int, user_id: int, seconds: float, think_ms: float, start_at: float, out: mp.Queue) -> None:
    setup_django()
    from django.contrib.auth import get_user_model

    from labelapp.models import Project, Queue, RankingTask
    from labelapp.services.labels import ranking_submit
    from labelapp.services.queue import task_claim

    project = Project.objects.get(pk=project_id)
    user = get_user_model().objects.get(pk=user_id)
    claims: list[float] = []
    submits: list[float] = []
    errors: list[str] = []
    # every task shares the same two completions (see seed)
    ids = list(RankingTask.completions.through.objects.values_list("completion_id", flat=True).distinct())
    rng = random.Random(user_id)
    # Warm up outside the timing: open the connection and run the claim's queries once (a
    # server process keeps both between requests). The lease is given back by skipping.
    from labelapp.services.queue import assignment_skip

    warm = task_claim(project=project, user=user, queue=Queue.RANK)
    if warm is not None:
        assignment_skip(assignment_id=warm.pk, user=user, reason="warm-up")
    while time.time() < start_at:
        time.sleep(0.005)
    deadline = start_at + seconds
    if think_ms:  # annotators do not all click at the same instant: stagger the first label
        time.sleep(rng.uniform(0, think_ms / 1000))
    while time.time() < deadline:
        try:
            t0 = time.perf_counter()
            assignment = task_claim(project=project, user=user, queue=Queue.RANK)
            claims.append(time.perf_counter() - t0)
            if assignment is None:
                break
            t0 = time.perf_counter()
            ranking_submit(assignment_id=assignment.pk, user=user, order=[[ids[0]], [ids[1]]])
            submits.append(time.perf_counter() - t0)
            if think_ms:
                time.sleep(min(rng.expovariate(1000 / think_ms), deadline - time.time()) if deadline > time.time() else 0)
        except Exception as exc:  # counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")
    out.put((claims, submits, errors))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def page_annotator(base: str, slug: str, username: str, seconds: float, think_ms: float, start_box: list,
                   results: list, barrier) -> None:
    """One annotator through the pages: open the rank page, submit the form, follow to the next."""
    from tests.webclient import PageClient, assignment_id

    client = PageClient(base, timeout=120)
    rng = random.Random(username)
    timings: dict[str, list[float]] = {"claim": [], "page": [], "submit": []}
    errors: list[str] = []
    submitted: list[int] = []
    login = client.login(username, PASSWORD)
    if login.status != 302:
        errors.append(f"login {login.status}")
    barrier.wait()  # every annotator logged in; then the main thread sets the start
    while not start_box or time.time() < start_box[0]:
        time.sleep(0.005)
    deadline = start_box[0] + seconds
    if think_ms:
        time.sleep(rng.uniform(0, think_ms / 1000))
    reply = client.claim(slug)
    timings["claim"].append(reply.seconds)
    while time.time() < deadline:
        if reply.status != 302 or not assignment_id(reply.location):
            if reply.status == 302:  # the project page: nothing left to rank
                break
            errors.append(f"claim/submit answered {reply.status}")
            reply = client.claim(slug)
            timings["claim"].append(reply.seconds)
            continue
        path = reply.location
        page, ids = client.rank_form(path)
        timings["page"].append(page.seconds)
        if page.status != 200 or len(ids) < 2:
            errors.append(f"rank page answered {page.status} with {len(ids)} responses")
            reply = client.claim(slug)
            continue
        if think_ms:
            time.sleep(min(rng.expovariate(1000 / think_ms), max(0.0, deadline - time.time())))
        reply = client.submit_ranking(path, ids)
        timings["submit"].append(reply.seconds)
        if reply.status == 302:
            submitted.append(assignment_id(path))
    results.append((timings, errors, submitted))


def run_pages(args, project_id: int, user_ids: list[int]) -> tuple[dict, list[str], float, list[float]]:
    import tempfile
    import threading

    from django.contrib.auth import get_user_model
    from django.db import connections

    from labelapp.models import Project
    from tests.webclient import Gunicorn

    slug = Project.objects.get(pk=project_id).slug
    names = list(get_user_model().objects.filter(pk__in=user_ids).order_by("pk").values_list("username", flat=True))
    connections.close_all()
    env = {"DATABASE_URL": os.environ["DATABASE_URL"], "DEBUG": "0", "LOG_LEVEL": "WARNING",
           "LOGIN_THROTTLE_ADDRESS_ATTEMPTS": "100000"}
    extra = ["--threads", str(args.threads)] if args.threads > 1 else []
    results: list = []
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as data_dir, Gunicorn(workers=args.workers, env=env, data_dir=data_dir,
                                                             extra=extra) as server:
        barrier = threading.Barrier(len(names) + 1)
        start_box: list[float] = []
        threads = [threading.Thread(target=page_annotator, args=(server.url, slug, n, args.seconds, args.think_ms,
                                                                 start_box, results, barrier)) for n in names]
        for t in threads:
            t.start()
        barrier.wait()  # everyone logged in (outside the timed window)
        start_box.append(time.time() + 1)
        t0 = time.time()
        while any(t.is_alive() for t in threads):
            if time.time() - t0 > 5 * (len(loads) + 1):
                loads.append(os.getloadavg()[0])
            time.sleep(0.5)
        elapsed = time.time() - start_box[0]
    timings = {k: [x for r in results for x in r[0][k]] for k in ("claim", "page", "submit")}
    errors = [x for r in results for x in r[1]]
    return timings, errors, elapsed, loads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--think-ms", type=float, default=0, help="mean pause between labels (0: none)")
    parser.add_argument("--via", choices=["services", "pages"], default="services",
                        help="call the services in processes, or use the HTML pages of a gunicorn server")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes (--via pages)")
    parser.add_argument("--threads", type=int, default=1, help="threads per gunicorn worker (--via pages)")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")
    recreate_database(url)
    setup_django()
    t0 = time.perf_counter()
    project_id, user_ids = seed(args.tasks, args.annotators, args.overlap)
    print(f"seeded {args.tasks:,} ranking tasks and {args.annotators} annotators in {time.perf_counter() - t0:.1f} s")
    from django.db import connections

    if args.via == "pages":
        report_pages(args, *run_pages(args, project_id, user_ids))
        return
    connections.close_all()
    out: mp.Queue = mp.Queue()
    start_at = time.time() + 15  # every process imported, connected and warmed up
    procs = [
        mp.Process(target=annotator, args=(project_id, uid, args.seconds, args.think_ms, start_at, out)) for uid in user_ids
    ]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    claims = [x for r in results for x in r[0]]
    submits = [x for r in results for x in r[1]]
    errors = [x for r in results for x in r[2]]

    from django.db.models import Count, Max

    from labelapp.models import Assignment, RankingTask

    over = RankingTask.objects.filter(ranking_count__gt=args.overlap).count()
    worst = RankingTask.objects.aggregate(m=Max("ranking_count"))["m"]
    twice = (
        Assignment.objects.values("user_id", "ranking_task_id").annotate(n=Count("id")).filter(n__gt=1).count()
    )
    print(f"annotators {args.annotators}, {args.seconds:.0f} s, overlap {args.overlap}, think {args.think_ms:.0f} ms")
    for name, values in (("claim", claims), ("submit", submits)):
        print(
            f"{name:<7} n={len(values):>6}  p50={pct(values, .5):6.1f} ms  p95={pct(values, .95):6.1f} ms  "
            f"p99={pct(values, .99):6.1f} ms  mean={statistics.fmean(values) * 1000 if values else float('nan'):6.1f} ms"
        )
    print(f"labels/s {len(submits) / args.seconds:.0f}")
    print(f"errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"over-assigned tasks {over} (max labels on a task {worst}, overlap {args.overlap}); same task twice {twice}")
    p95 = max(pct(claims, .95), pct(submits, .95))
    print(f"p95 vs 50 ms target: {p95 / 50:.2f}x of the budget")
    if errors or over or twice:
        sys.exit(1)



def check_queue(overlap: int) -> tuple[int, int, int, int]:
    """(tasks over the overlap, most labels on a task, (user, task) pairs twice, rankings ≠ counters)."""
    from django.db.models import Count, Max

    from labelapp.models import Assignment, Ranking, RankingTask

    over = RankingTask.objects.filter(ranking_count__gt=overlap).count()
    worst = RankingTask.objects.aggregate(m=Max("ranking_count"))["m"]
    twice = Assignment.objects.values("user_id", "ranking_task_id").annotate(n=Count("id")).filter(n__gt=1).count()
    per_task = Ranking.objects.values("task_id").annotate(n=Count("id")).filter(n__gt=overlap).count()
    return over + per_task, worst, twice, Ranking.objects.count()


def report_pages(args, timings: dict, errors: list[str], elapsed: float, loads: list[float]) -> None:
    over, worst, twice, rankings = check_queue(args.overlap)
    print(f"via pages: gunicorn {args.workers} workers x {args.threads} threads; {args.annotators} annotators, "
          f"{args.seconds:.0f} s, overlap {args.overlap}, think {args.think_ms:.0f} ms, {os.cpu_count()} CPUs")
    for name in ("page", "submit", "claim"):
        values = timings[name]
        print(
            f"{name:<7} n={len(values):>6}  p50={pct(values, .5):7.1f} ms  p95={pct(values, .95):7.1f} ms  "
            f"p99={pct(values, .99):7.1f} ms  mean={statistics.fmean(values) * 1000 if values else float('nan'):7.1f} ms"
        )
    submits = len(timings["submit"])
    print(f"labels/s {submits / elapsed:.1f} ({submits} submits in {elapsed:.1f} s; rankings stored {rankings}); "
          f"requests/s {(submits + len(timings['page']) + len(timings['claim'])) / elapsed:.1f}")
    if loads:
        print(f"load average (1 min) during the run: mean {statistics.fmean(loads):.2f}, max {max(loads):.2f}; "
              f"at the end {os.getloadavg()[0]:.2f}")
    print(f"errors {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"over-assigned tasks {over} (max labels on a task {worst}, overlap {args.overlap}); same task twice {twice}")
    if errors or over or twice:
        sys.exit(1)


if __name__ == "__main__":
    main()
