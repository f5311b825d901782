"""Property tests of the live API over HTTP (real Redis, bearer token) from its own OpenAPI schema: for every
operation, requests that schemathesis derives from the schema, valid and invalid, never get a 5xx, and every
response conforms to the schema (a documented status code, content type and body).

Cases come from each operation's Hypothesis strategy rather than `schemathesis.pytest.from_fixture`, whose lazy
loader does not run under pytest 9 (it sets `request.node._nodeid`, which pytest 9 no longer has).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support import TOKEN, ApiServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25  # per operation and mode


@pytest.mark.slow
def test_every_operation_honours_the_schema(api: ApiServer) -> None:
    # Learners of the jobs that generated requests submit exit at once: nothing outlives the test.
    api.env["FAKE_LEARNER_EXIT"] = "3"
    api.restart()
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/jobs", "POST /v1/evaluations", "GET /v1/evaluations"}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

            try:
                check()
            except BaseException as exc:
                exc.add_note(f"operation {operation.label}, {mode.value} cases")
                raise
