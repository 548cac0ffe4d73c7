"""A real web server (gunicorn, several worker processes) on the test database, and a small
stdlib HTTP client that uses the annotator pages like a browser without JavaScript: log in, claim,
read the rank form, submit. Used by the fault and throttle tests and by bench/claim_load.py."""
from __future__ import annotations

import html
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(settings_dict: dict, application_name: str = "") -> str:
    """A URL for the database Django is connected to (the test database during tests)."""
    user = settings_dict.get("USER") or "postgres"
    password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host, port = settings_dict.get("HOST") or "127.0.0.1", settings_dict.get("PORT") or 5432
    query = f"?application_name={application_name}" if application_name else ""
    return f"postgres://{user}{password}@{host}:{port}/{settings_dict['NAME']}{query}"


class Gunicorn:
    """`gunicorn config.wsgi` with `workers` processes on a free port, started and stopped around a
    `with` block. `env` is added to the environment (DATABASE_URL at least)."""

    def __init__(self, *, workers: int = 2, env: dict[str, str], data_dir: str, extra: list[str] | None = None,
                 unset: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if k not in unset}
        self.env = {**base, "DATA_DIR": data_dir, "ALLOWED_HOSTS": "127.0.0.1,localhost", **env}
        self.workers = workers
        self.extra = extra or []
        self.log = Path(data_dir) / "gunicorn.log"

    def __enter__(self) -> "Gunicorn":
        cmd = [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", str(self.workers), "-b", f"127.0.0.1:{self.port}",
               "--timeout", "60", "--graceful-timeout", "5", *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/accounts/login/", timeout=5).read()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"gunicorn did not answer in 60 s: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@dataclass
class Reply:
    status: int
    body: str
    location: str = ""
    seconds: float = 0.0
    retry_after: str = ""


class PageClient:
    """One browser session: cookies, the CSRF token, no automatic redirects."""

    def __init__(self, base: str, *, forwarded_for: str | None = None, timeout: float = 60):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())
        self.headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        self.timeout = timeout

    def request(self, path: str, data: dict | None = None, headers: dict | None = None, json_body=None) -> Reply:
        url = path if path.startswith("http") else self.base + path
        body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
        headers = {**self.headers, **(headers or {})}
        if json_body is not None:
            import json

            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if data is not None:
            headers["Referer"] = self.base + "/"  # Django's CSRF check wants a same-origin referer on POST
            token = self.csrf()
            if token:
                headers["X-CSRFToken"] = token
        req = urllib.request.Request(url, data=body, headers=headers)
        t0 = time.perf_counter()
        try:
            with self.opener.open(req, timeout=self.timeout) as response:
                reply = Reply(response.status, response.read().decode("utf-8", "replace"))
        except urllib.error.HTTPError as exc:
            reply = Reply(exc.code, exc.read().decode("utf-8", "replace"), exc.headers.get("Location", ""),
                          retry_after=exc.headers.get("Retry-After", ""))
        reply.seconds = time.perf_counter() - t0
        return reply

    def csrf(self) -> str:
        return next((c.value for c in self.jar if c.name == "csrftoken"), "")

    def login(self, username: str, password: str, path: str = "/accounts/login/") -> Reply:
        self.request(path)  # sets the CSRF cookie
        return self.request(path, {"username": username, "password": password, "csrfmiddlewaretoken": self.csrf()})

    # ---- the rank queue ---------------------------------------------------------------------

    def claim(self, slug: str, queue: str = "rank") -> Reply:
        return self.request(f"/p/{slug}/{queue}/next/", {"csrfmiddlewaretoken": self.csrf()})

    def rank_form(self, path: str) -> tuple[Reply, list[int]]:
        page = self.request(path)
        return page, [int(x) for x in re.findall(r'name="rank_(\d+)"', page.body)]

    def submit_ranking(self, path: str, completion_ids: list[int]) -> Reply:
        data = {f"rank_{cid}": str(i + 1) for i, cid in enumerate(completion_ids)}
        data.update(time_spent_ms="1000", csrfmiddlewaretoken=self.csrf())
        return self.request(path, data)


def assignment_id(location: str) -> int | None:
    """The assignment id of a rank page's URL (/p/<slug>/rank/<id>/)."""
    found = re.search(r"/rank/(\d+)/?$", urllib.parse.urlparse(location).path)
    return int(found.group(1)) if found else None


def messages_of(body: str) -> list[str]:
    listed = re.search(r'<ul class="messages"[^>]*>(.*?)</ul>', body, re.S)
    items = re.findall(r"<li[^>]*>(.*?)</li>", listed.group(1), re.S) if listed else []
    return [html.unescape(re.sub(r"<[^>]+>", "", m)).strip() for m in items]
