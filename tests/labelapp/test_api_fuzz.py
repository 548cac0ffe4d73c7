"""Property-based run against the OpenAPI schema (schemathesis): whatever the generated input,
no operation answers with a server error."""
import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from labelapp.services.tokens import api_token_create
from tests.conftest import add_member, make_project, make_prompt, make_task

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())


@pytest.fixture
def token(db):
    # Like Django's test client: keep the test's connection (and transaction) across requests.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    cache.clear()
    project = make_project(overlap=1)
    reviewer = add_member(project, role="admin")
    make_prompt(project, category="chat")
    make_task(project)
    _, key = api_token_create(user=reviewer, name="fuzz")
    yield key
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.mark.django_db
@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, token):
    case.call_and_validate(headers={"Authorization": f"Token {token}"}, checks=[not_a_server_error])
