"""Templates past the documented limits are refused when a sync is saved, without the API
process making the value it would have made."""

from __future__ import annotations

import resource

import pytest

from tests.api.conftest import API, assert_error
from tests.conftest import bearer


@pytest.mark.parametrize("template", [
    '{{ "x"|center(400000000) }}',
    '{{ "ab"|replace("", "ab" * 30000) }}',
    '{% set ns = namespace(v="aaaaaaaa") %}{% for i in range(40) %}'
    '{% set ns.v = ns.v|replace("a", "aa") %}{% endfor %}{{ ns.v }}',
])
def test_a_template_past_the_limits_answers_422_without_growing_the_api(
    client, api_key, destination, source, template
):
    body = {
        "name": "t", "sourceQuery": "SELECT 1 AS id", "destinationId": destination["id"],
        "objectName": "records", "syncMode": "upsert",
        "fieldMappings": [{"source": "id", "destination": "id", "key": True},
                          {"template": template, "destination": "label"}],
    }
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    response = client.post(f"{API}/syncs", json=body, headers=bearer(api_key))
    assert_error(response, 422, "/fieldMappings/1/template")
    assert "65536" in response.get_json()["errors"][0]["detail"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024
    listed = client.get(f"{API}/syncs", headers=bearer(api_key)).get_json()["data"]
    assert listed == []
