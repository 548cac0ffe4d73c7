import pytest
from django.core.management import call_command

from labelapp.models import Category, Membership, Prompt, RankingTask

pytestmark = pytest.mark.django_db


def test_demo_creates_a_project_with_work_in_every_queue(capsys):
    call_command("demo")
    out = capsys.readouterr().out
    assert "annotator1" in out and "password:" in out
    prompts = Prompt.objects.filter(project__slug="demo")
    assert prompts.count() >= 40
    assert set(prompts.values_list("category", flat=True)) == set(Category.values)
    tasks = RankingTask.objects.filter(project__slug="demo")
    assert tasks.count() >= 10
    assert all(t.completions.count() == 4 for t in tasks)
    assert sorted(Membership.objects.values_list("role", flat=True)) == ["admin", "annotator", "annotator"]
    call_command("demo")  # a second run changes nothing
    assert "already exists" in capsys.readouterr().out
    assert Prompt.objects.count() == prompts.count()
