"""Export benchmark, side by side: Label Studio's JSON export against our pairs export.

The same N pairwise items (prompt, chosen, rejected; built deterministically from the HH-RLHF test
splits in /work/shared/data/hh_rlhf_test_splits, cycled with an "[item i]" suffix on the prompt so
every item is distinct) go into both systems, in the same run, on the same machine:

- Label Studio (its own virtual environment, .venv-labelstudio, SQLite in a throwaway data dir):
  `label-studio start --no-browser --enable-legacy-api-token ...`, a project with a two-answer
  Choices config, the items imported through POST /api/projects/{id}/import (JSON lists, in
  batches) as tasks WITH one annotation each (the preference), then its JSON export
  GET /api/projects/{id}/export?exportType=JSON (the synchronous "Export" download).
- Ours (this venv, a fresh PostgreSQL database): the items as a trl-pairs JSONL file through
  labelapp.services.label_imports.labels_import, then `manage.py runserver --noreload` (DEBUG=0)
  and GET /api/v1/projects/{id}/exports/pairs/, timed with bench/export_pairs.py's `download`.
  Ours runs at two sizes (--ours-small and --items) so that "memory flat" shows as the same RSS
  growth for both.

Each server gets one warm-up request (a project list) before anything is timed; the warm-up is
not in the numbers. Peak RSS is polled from /proc/<pid>/status every 50 ms (the Label Studio
figure sums the server process and any children).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/studio_bench_ls \\
        nice -n 5 .venv/bin/python bench/export_vs_labelstudio.py --items 50000

The database named by DATABASE_URL is dropped and re-created.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from claim_load import recreate_database  # noqa: E402
from export_pairs import download, free_port, rss_mb  # noqa: E402

HH_DIR = Path("/work/shared/data/hh_rlhf_test_splits")
LS_VENV = ROOT / ".venv-labelstudio"
LS_LABEL_CONFIG = """<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Answer A"/>
  <Text name="answer_a" value="$answer_a"/>
  <Header value="Answer B"/>
  <Text name="answer_b" value="$answer_b"/>
  <Choices name="preference" toName="prompt" choice="single" showInLine="true">
    <Choice value="A"/>
    <Choice value="B"/>
  </Choices>
</View>"""


# ---- the items -------------------------------------------------------------------------------


def _hh_pairs() -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) from the HH-RLHF test splits: the prompt is the last human
    turn, the answers the last assistant turns. Pairs with equal or empty answers are skipped."""
    pairs = []
    for path in sorted(HH_DIR.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ends = []
                for side in ("chosen", "rejected"):
                    text = row[side]
                    cut = text.rfind("\n\nAssistant:")
                    ends.append((text[:cut], text[cut + len("\n\nAssistant:"):].strip()))
                (context, chosen), (_, rejected) = ends
                human = context.rfind("\n\nHuman:")
                prompt = context[human + len("\n\nHuman:"):].strip() if human >= 0 else ""
                if prompt and chosen and rejected and chosen != rejected:
                    pairs.append((prompt, chosen, rejected))
    if not pairs:
        sys.exit(f"no HH-RLHF pairs found under {HH_DIR}")
    return pairs


def make_items(n: int) -> list[dict]:
    base = _hh_pairs()
    return [
        {"prompt": f"{p} [item {i}]", "chosen": c, "rejected": r}
        for i, (p, c, r) in ((i, base[i % len(base)]) for i in range(n))
    ]


# ---- ours --------------------------------------------------------------------------------------


def seed_ours(items: list[dict], sizes: list[int]) -> list[tuple[int, int, str]]:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from labelapp.services.label_imports import labels_import
    from labelapp.services.projects import membership_set, project_create
    from labelapp.services.tokens import api_token_create

    call_command("migrate", verbosity=0)
    projects = []
    for n in sizes:
        project = project_create(name=f"ls-bench-{n}", k=2)
        user = get_user_model().objects.create_user(f"exporter-{n}")
        membership_set(project=project, user=user, role="admin")
        data = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items[:n]).encode()
        t0 = time.perf_counter()
        result = labels_import(project=project, data=data, fmt="trl-pairs")
        print(f"ours: imported {result.rows:,} trl-pairs rows in {time.perf_counter() - t0:.0f} s", flush=True)
        _, key = api_token_create(user=user, name="bench")
        projects.append((n, project.pk, key))
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    connection.close()
    return projects


def wait_port(port: int, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server did not open port {port} in {seconds:.0f} s")


def run_ours(projects: list[tuple[int, int, str]]) -> list[dict]:
    import requests

    port = free_port()
    env = {**os.environ, "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        wait_port(port, server, 60)
        # warm-up, not timed (as in bench/export_pairs.py)
        requests.get(f"http://127.0.0.1:{port}/api/v1/projects/", headers={"Authorization": f"Token {projects[0][2]}"})
        for n, project_id, key in projects:
            r = download(f"http://127.0.0.1:{port}/api/v1/projects/{project_id}/exports/pairs/", key, server.pid)
            r.update(system="ours", size=n)
            results.append(r)
            print(f"ours: exported {r['records']:,} records in {r['seconds']:.1f} s", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return results


# ---- Label Studio ------------------------------------------------------------------------------


def _tree_rss_mb(pid: int) -> float:
    """RSS of a process plus its children (label-studio start may fork)."""
    total = rss_mb(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += _tree_rss_mb(int(child))
        except (OSError, ValueError):
            pass
    return total


def download_json(url: str, key: str, pid: int) -> dict:
    """Like export_pairs.download, for a JSON-array body: the body is kept (spooled to disk) and
    its records are counted after the clock stops."""
    import requests

    peak = [_tree_rss_mb(pid)]
    idle = peak[0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_mb(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    body = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    t0 = time.perf_counter()
    first = None
    size = 0
    with requests.get(url, headers={"Authorization": f"Token {key}"}, stream=True, timeout=7200) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=1 << 16):
            if first is None:
                first = time.perf_counter() - t0
            size += len(chunk)
            body.write(chunk)
    total = time.perf_counter() - t0
    done.set()
    watcher.join()
    body.seek(0)
    records = len(json.load(body))
    return {"records": records, "seconds": total, "ttfb": first, "idle_mb": idle, "peak_mb": peak[0], "bytes": size}


def ls_tasks(items: list[dict]) -> list[dict]:
    """One task per item, with its preference as one annotation. The chosen answer alternates
    between A and B so that the position carries no signal."""
    tasks = []
    for i, item in enumerate(items):
        a, b, choice = (item["chosen"], item["rejected"], "A") if i % 2 == 0 else (item["rejected"], item["chosen"], "B")
        tasks.append({
            "data": {"prompt": item["prompt"], "answer_a": a, "answer_b": b},
            "annotations": [{"result": [{
                "from_name": "preference", "to_name": "prompt", "type": "choices",
                "value": {"choices": [choice]},
            }]}],
        })
    return tasks


def run_labelstudio(items: list[dict], batch: int, keep_dir: bool) -> dict:
    import requests

    binary = LS_VENV / "bin" / "label-studio"
    if not binary.exists():
        raise RuntimeError(f"{binary} not found; install label-studio into its own venv there")
    version = subprocess.run(
        [str(LS_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True, text=True,
    ).stdout.strip()
    data_dir = Path(tempfile.mkdtemp(prefix="ls-bench-"))
    port = free_port()
    token = secrets.token_hex(20)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "DEBUG")}
    env.update(LABEL_STUDIO_BASE_DATA_DIR=str(data_dir), PATH=f"{LS_VENV / 'bin'}:{env.get('PATH', '')}",
               VIRTUAL_ENV=str(LS_VENV), LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true")
    log = open(data_dir / "server.log", "w")
    print(f"label-studio {version}: starting on port {port}, data dir {data_dir} (SQLite)", flush=True)
    server = subprocess.Popen(
        [str(binary), "start", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
         "--username", "bench@example.com", "--password", secrets.token_hex(12),
         "--user-token", token, "--enable-legacy-api-token"],
        cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    headers = {"Authorization": f"Token {token}"}
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        wait_port(port, server, 900)
        for _ in range(300):  # the port opens before the first request is served
            try:
                if requests.get(f"{base}/api/projects/", headers=headers, timeout=30).ok:  # warm-up, not timed
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            raise RuntimeError("label studio never answered /api/projects/ with the legacy token")
        print(f"label-studio: up in {time.perf_counter() - t0:.0f} s", flush=True)
        response = requests.post(f"{base}/api/projects/", headers=headers, timeout=120,
                                 json={"title": f"pairs {len(items)}", "label_config": LS_LABEL_CONFIG})
        response.raise_for_status()
        project_id = response.json()["id"]
        tasks = ls_tasks(items)
        t0 = time.perf_counter()
        for start in range(0, len(tasks), batch):
            r = requests.post(f"{base}/api/projects/{project_id}/import", headers=headers,
                              json=tasks[start:start + batch], timeout=3600)
            if not r.ok:
                raise RuntimeError(f"import batch at {start} failed: {r.status_code} {r.text[:500]}")
            print(f"label-studio: imported {min(start + batch, len(tasks)):,}/{len(tasks):,} tasks "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        project = requests.get(f"{base}/api/projects/{project_id}/", headers=headers, timeout=120).json()
        print(f"label-studio: project has {project.get('task_number')} tasks, "
              f"{project.get('total_annotations_number')} annotations", flush=True)
        r = download_json(f"{base}/api/projects/{project_id}/export?exportType=JSON", token, server.pid)
        r.update(system=f"Label Studio {version}", size=len(items), version=version)
        print(f"label-studio: exported {r['records']:,} records ({r['bytes'] / 1e6:.0f} MB) in {r['seconds']:.1f} s",
              flush=True)
        return r
    except Exception:
        log.flush()
        print("label-studio log tail:\n" + (data_dir / "server.log").read_text()[-3000:], flush=True)
        raise
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        if not keep_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


# ---- report ------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print()
    print(f"{'system':<22} {'records':>9} {'seconds':>8} {'records/s':>10} {'first byte ms':>14} "
          f"{'idle RSS MB':>12} {'peak RSS MB':>12} {'growth MB':>10}")
    for r in rows:
        print(f"{r['system']:<22} {r['records']:>9,} {r['seconds']:>8.1f} {r['records'] / r['seconds']:>10,.0f} "
              f"{r['ttfb'] * 1000:>14,.0f} {r['idle_mb']:>12.0f} {r['peak_mb']:>12.0f} "
              f"{r['peak_mb'] - r['idle_mb']:>+10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000, help="pairwise items in both systems")
    parser.add_argument("--ours-small", type=int, default=10_000,
                        help="a second, smaller size for ours, to show RSS growth does not follow size (0: none)")
    parser.add_argument("--ls-batch", type=int, default=5_000, help="tasks per Label Studio import request")
    parser.add_argument("--skip-labelstudio", action="store_true")
    parser.add_argument("--keep-ls-dir", action="store_true", help="keep Label Studio's data dir (and log)")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("set DATABASE_URL to a scratch PostgreSQL database (it is dropped and re-created)")

    t0 = time.perf_counter()
    items = make_items(args.items)
    print(f"{len(items):,} items built in {time.perf_counter() - t0:.1f} s", flush=True)

    recreate_database(url)
    sizes = sorted({n for n in (args.ours_small, args.items) if 0 < n <= args.items})
    rows = run_ours(seed_ours(items, sizes))

    ls = None
    if not args.skip_labelstudio:
        try:
            ls = run_labelstudio(items, args.ls_batch, args.keep_ls_dir)
            rows.append(ls)
        except Exception as exc:  # report what worked
            print(f"label-studio: FAILED: {exc!r}", flush=True)

    print_table(rows)
    ours = next(r for r in rows if r["system"] == "ours" and r["size"] == args.items)
    if ls is not None:
        speed = (ours["records"] / ours["seconds"]) / (ls["records"] / ls["seconds"])
        ttfb = ours["ttfb"] / ls["ttfb"]
        print(f"\nours/LS records/s: {speed:.1f}x   (target >= 20x: {'met' if speed >= 20 else 'NOT met'})")
        print(f"ours/LS first byte: {ttfb:.4f}  (ours {ours['ttfb'] * 1000:.0f} ms vs LS {ls['ttfb'] * 1000:,.0f} ms; "
              f"LS first byte is {1 / ttfb:,.0f}x later; target ours < 500 ms: "
              f"{'met' if ours['ttfb'] < 0.5 else 'NOT met'})")
    print("memory (ours, RSS growth during export): " + ", ".join(
        f"{r['records']:,} records +{r['peak_mb'] - r['idle_mb']:.0f} MB" for r in rows if r["system"] == "ours"))


if __name__ == "__main__":
    main()
