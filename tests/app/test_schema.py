"""Property-based API tests from the OpenAPI schema (schemathesis): no 5xx, responses match the schema."""

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.engine import Engine
from app.main import create_app
from app.settings import Settings
from tests.conftest import make_weights_file

_weights = make_weights_file(Path(tempfile.mkdtemp(prefix="rnnlm-schema-")) / "tiny.safetensors")
_settings = Settings(weights=_weights, max_num_tokens=50, max_text_chars=2000)
app = create_app(_settings)
app.state.engine = Engine.load(_settings)  # what the lifespan does; schemathesis calls the app without it

schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    # Every check but "schema-valid data is accepted": some 422s are semantic and beyond JSON Schema (a text
    # must have 2 characters to score, or 1 after a context; a prompt must not be empty).
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
