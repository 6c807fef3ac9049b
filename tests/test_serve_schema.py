"""A property-based run of the server's OpenAPI schema (Schemathesis): for requests that fit
the schema and requests that do not, no 5xx and every answer as the schema documents it."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serve_fixtures import NAME, build_app, shared_release


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    app = build_app(shared_release(tmp_path_factory))
    # Schemathesis starts the app's lifespan (its batch worker) itself, for its own client.
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_documented(schema, mode):
    # The model's name stays the served one, so that invalid requests reach the body's checks.
    strategy = schema.as_strategy(mode, path_parameters={"name": NAME})

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case):
        # Every other built-in check runs. Not this one: a schema-valid instance may still be
        # refused with 400, as what makes it valid (a decodable PNG, pixel values in range)
        # is the project's serve_preprocess's to say, not the schema's.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    check()
