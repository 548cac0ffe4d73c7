"""Making a model current while another call does the same (the studio's "make current", the API, a finished
run registering its model, a round's promotion gate) is serialised on the project's row, on PostgreSQL: never an
IntegrityError from `modelversion_one_current_per_kind`, exactly one current model, and the same version made
current twice is a no-op."""
from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from labelapp.models import ModelVersion
from labelapp.services.runs import model_version_make_current, model_version_register
from tests.conftest import add_member, make_project, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def _postgres():
    if connection.vendor != "postgresql":
        pytest.skip("row locking needs PostgreSQL: run with DATABASE_URL=postgres://…")


def _version(project, name: str, current: bool = False) -> ModelVersion:
    return ModelVersion.objects.create(project=project, name=name, kind=ModelVersion.Kind.POLICY,
                                       artifact_path=f"/m/{name}", is_current=current)


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # a transaction otherwise sees its first snapshot throughout
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def _race(calls, hold_pk: int) -> list[BaseException]:
    """Run `calls` in threads while this thread holds the current model's row, so each call is inside its
    transaction, waiting on a lock, when the row is let go: the worst interleaving, every time."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    with transaction.atomic():
        ModelVersion.objects.select_for_update().get(pk=hold_pk)
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while _waiting_on_locks() < len(calls) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _waiting_on_locks() == len(calls), f"the calls did not all reach a lock: {errors}"
    for thread in threads:
        thread.join(timeout=60)
    return errors


def _project_with_current():
    """(project, its admin, its current policy "v0")."""
    _postgres()
    project = make_project()
    admin = add_member(project, make_user(), role="admin")
    return project, admin, _version(project, "v0", current=True)


def test_two_admins_making_two_versions_current_at_once():
    project, admin, old = _project_with_current()
    first, second = _version(project, "v1"), _version(project, "v2")
    errors = _race([lambda: model_version_make_current(version_id=first.pk, user=admin),
                    lambda: model_version_make_current(version_id=second.pk, user=admin)], hold_pk=old.pk)
    assert errors == []
    current = list(ModelVersion.objects.filter(project=project, kind="policy", is_current=True).values_list("name", flat=True))
    assert len(current) == 1 and current[0] in {"v1", "v2"}


def test_a_run_registering_its_model_while_an_admin_makes_another_current():
    """What failed finished runs: run_finish's store registers the run's model as current."""
    project, admin, old = _project_with_current()
    chosen = _version(project, "v1")
    errors = _race([lambda: model_version_make_current(version_id=chosen.pk, user=admin),
                    lambda: model_version_register(project=project, name="ppo-9", kind="policy", artifact_path="/m/9",
                                                   make_current=True)], hold_pk=old.pk)
    assert errors == []
    assert ModelVersion.objects.filter(project=project, kind="policy").count() == 3
    assert ModelVersion.objects.filter(project=project, kind="policy", is_current=True).count() == 1


def test_the_same_version_made_current_twice_at_once_and_again():
    project, admin, old = _project_with_current()
    chosen = _version(project, "v1")
    errors = _race([lambda: model_version_make_current(version_id=chosen.pk, user=admin)] * 2, hold_pk=old.pk)
    assert errors == []
    again = model_version_make_current(version_id=chosen.pk, user=admin)
    assert again.is_current
    assert list(ModelVersion.objects.filter(project=project, is_current=True).values_list("name", flat=True)) == ["v1"]
