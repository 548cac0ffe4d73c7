"""Settings come from the environment; production refuses unsafe ones."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_settings(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DEBUG", "SECRET_KEY", "APP_ENV"}}
    clean.update({"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **env})
    code = (
        "import django; django.setup(); from django.conf import settings as s; from django.db import connection;"
        "c = connection.cursor(); c.execute('PRAGMA journal_mode') if connection.vendor == 'sqlite' else None;"
        "print(s.DEBUG, connection.vendor, c.fetchone()[0] if connection.vendor == 'sqlite' else '-', s.ALLOWED_HOSTS)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True)


def test_default_is_sqlite_in_wal_mode_in_data_dir(tmp_path):
    run = load_settings(tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[:3] == ["True", "sqlite", "wal"]
    assert (tmp_path / "studio.sqlite3").exists()


def test_postgres_when_database_url_is_given(tmp_path):
    run = load_settings(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres", ALLOWED_HOSTS="a.example, b.example")
    assert run.returncode == 0, run.stderr
    assert "postgresql" in run.stdout and "['a.example', 'b.example']" in run.stdout


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DEBUG": "1", "SECRET_KEY": "x" * 40}, "refuses to start with DEBUG on"),
        ({"DEBUG": "0"}, "needs SECRET_KEY"),
        ({"DEBUG": "0", "SECRET_KEY": "short"}, "needs SECRET_KEY"),
        ({"DEBUG": "maybe", "SECRET_KEY": "x" * 40}, "DEBUG='maybe' is not a boolean"),
    ],
)
def test_production_refuses_unsafe_settings(tmp_path, env, message):
    run = load_settings(tmp_path, APP_ENV="production", **env)
    assert run.returncode != 0
    assert message in run.stderr


def test_production_starts_with_safe_settings(tmp_path):
    run = load_settings(tmp_path, APP_ENV="production", DEBUG="0", SECRET_KEY="k" * 50)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("False sqlite")
