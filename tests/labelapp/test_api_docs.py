"""Every curl example in docs/API.md runs against a live server and succeeds."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from labelapp.models import Queue
from labelapp.services.labels import demonstration_submit
from labelapp.services.queue import task_claim
from labelapp.services.tokens import api_token_create
from tests.conftest import add_member, make_project, make_prompt, make_task

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"


def examples() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_doc_has_examples():
    assert len(examples()) >= 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("index", range(len(examples())))
def test_curl_example_runs(live_server, index):
    project = make_project(overlap=1)
    reviewer = add_member(project, role="reviewer")
    make_task(project)
    # a demonstration by an annotator, waiting for review (the claim/submit examples review it)
    writer = add_member(project, role="annotator")
    make_prompt(project)
    lease = task_claim(project=project, user=writer, queue=Queue.WRITE)
    demonstration_submit(assignment_id=lease.pk, user=writer, text="A demonstration to review.")
    _, key = api_token_create(user=reviewer, name="docs")
    env = {**os.environ, "STUDIO": live_server.url, "TOKEN": key, "PROJECT": str(project.pk)}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", examples()[index]], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr + run.stdout
