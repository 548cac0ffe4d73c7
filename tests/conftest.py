"""Shared fixtures and factories. Service tests run against the database named by
DATABASE_URL (PostgreSQL in `make test` and CI)."""
from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from pathlib import Path

import pytest

# The suite runs in fp32 on every CPU, so that its numbers do not depend on the host: on a CPU with native
# bf16 (AVX512-BF16, AMX) dtype "auto" would load bf16 weights (rlhf.models.cpu_bf16_native). Set here, before
# any worker process starts, so they inherit it; the tests of the bf16 path set it to "1" themselves.
os.environ.setdefault("RLHF_CPU_BF16", "0")

_seq = itertools.count(1)


def make_user(username: str | None = None, **extra):
    from django.contrib.auth import get_user_model

    username = username or f"user{next(_seq)}"
    return get_user_model().objects.create_user(username=username, password="pw-" + username, **extra)


def make_project(**kwargs):
    from labelapp.services.projects import project_create

    kwargs.setdefault("name", f"Project {next(_seq)}")
    return project_create(**kwargs)


def add_member(project, user=None, role="annotator"):
    from labelapp.services.projects import membership_set

    user = user or make_user()
    membership_set(project=project, user=user, role=role)
    return user


def make_prompt(project, text: str | None = None, **kwargs):
    from labelapp.services.projects import prompt_create

    return prompt_create(project=project, text=text or f"Prompt number {next(_seq)}?", **kwargs)


def make_task(project, prompt=None, k: int | None = None, texts: list[str] | None = None):
    from labelapp.models import Completion
    from labelapp.services.projects import completion_create, ranking_task_create

    prompt = prompt or make_prompt(project)
    texts = texts or [f"answer {i} to {prompt.pk}" for i in range(k or project.k)]
    completions = [completion_create(prompt=prompt, text=t, source=Completion.Source.HANDWRITTEN) for t in texts]
    return ranking_task_create(project=project, prompt=prompt, completions=completions)


@pytest.fixture
def project(db):
    return make_project(k=4, overlap=1)


@pytest.fixture
def annotator(project):
    return add_member(project, role="annotator")


@pytest.fixture
def reviewer(project):
    return add_member(project, role="reviewer")


@pytest.fixture
def sent(monkeypatch):
    """Run messages the services would publish, recorded instead (the real broker is exercised by
    tests/workers)."""
    from labelapp.services import runs as run_services

    messages: list[int] = []
    monkeypatch.setattr(run_services, "enqueue", lambda run: messages.append(run.pk))
    return messages


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """One tiny random-weight checkpoint for the session (rlhf.testing), for rlhf and worker tests."""
    from rlhf.testing import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


def load_bench_module(name: str):
    """bench/<name>.py as a module, for tests of a benchmark's helpers; the script puts the repository and bench/
    first on sys.path for itself, which is undone here for the rest of the test session."""
    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(name, repo / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module
