"""Schemathesis against the API's own OpenAPI document, through the WSGI app with a valid key:
no operation answers 5xx, and every answer has a documented status, content type and a body
that matches its documented schema. Bounded: at most FUZZ_EXAMPLES cases per operation."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api import create_app
from tests.conftest import bearer

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("RETL_FUZZ_EXAMPLES", "200"))


# The app opens its Postgres pool on first use, after the test fixtures set the environment.
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", create_app())


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, api_key):
    # Not positive_data_acceptance: some rules no schema states (a connector name that exists, a
    # destination id of this workspace, a config its connector takes) answer 422 to bodies the
    # document allows; a documented 422 in the error envelope is still checked like any answer.
    case.call_and_validate(headers=bearer(api_key), excluded_checks=[positive_data_acceptance])
