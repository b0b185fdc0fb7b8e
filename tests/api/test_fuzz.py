"""Schemathesis against the API's own OpenAPI document, through the WSGI app with a valid key:
no operation answers 5xx, and every answer has a documented status, content type and a body
that matches its documented schema; bodies and parameters the document forbids are refused.
Bounded: at most RETL_FUZZ_EXAMPLES (default 50; `make fuzz` runs 300) generated cases per operation, plus the
boundary cases of schemathesis' coverage phase."""

from __future__ import annotations

import os

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api import create_app
from shared import ids
from shared.services.auth import hash_key

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("RETL_FUZZ_EXAMPLES", "50"))
# A key known before the app exists, so schemathesis applies it as the document's bearer auth
# (and knows requests carry it); the `fuzz_key` fixture stores its hash.
FUZZ_KEY = "retl_sk_fuzz-key-for-the-schema-run-0000000000000000"

# The app opens its Postgres pool on first use, after the test fixtures set the environment.
schema = schemathesis.openapi.from_wsgi("/api/openapi.json", create_app())
if os.environ.get("RETL_FUZZ_PATH"):
    schema = schema.include(path_regex=os.environ["RETL_FUZZ_PATH"])


@schema.auth()
class FuzzKey:
    def get(self, case, context):
        return FUZZ_KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture
def fuzz_key(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO workspaces (id, name) VALUES (%s, 'fuzz')", (ids.new_id(ids.WORKSPACE),)
        )
        conn.execute(
            "INSERT INTO api_keys (id, workspace_id, key_hash, display_hint)"
            " SELECT %s, id, %s, 'retl_sk_fuzz...' FROM workspaces WHERE name = 'fuzz'",
            (ids.new_id(ids.API_KEY), hash_key(FUZZ_KEY)),
        )


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, fuzz_key):
    # Not positive_data_acceptance: some rules no schema states (a connector name that exists, a
    # destination id of this workspace, a config its connector takes) answer 422 to bodies the
    # document allows; a documented 422 in the error envelope is still checked like any answer.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
