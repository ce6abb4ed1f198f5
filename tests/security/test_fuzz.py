"""Property-based fuzzing of the whole OpenAPI schema (schemathesis): no 5xx, responses match.

Bounded (a few examples per operation, valid keys injected) so it stays a quick suite member;
raise REJOIN_FUZZ_EXAMPLES for a deeper run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.testing import WorkflowEnvironment

from api.deps import AppState
from api.main import create_app
from api.routes.sections import SectionCreate, create_section
from settings import Settings
from store.engine import Store

EXAMPLES = int(os.environ.get("REJOIN_FUZZ_EXAMPLES", "4"))
KEYS: dict[str, str] = {}

# The schema is loaded at collection time from an app on a throw-away database; the fixture
# below points that app at the session's real store and Temporal before any request is made.
_TMP = Path(tempfile.mkdtemp(prefix="rejoin-fuzz-"))
_APP = create_app(Settings(data_dir=_TMP, admin_key="fuzz-admin", rate_limit_per_second=0.0))
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _wire_app(env: WorkflowEnvironment, settings: Settings, store: Store) -> None:
    section = create_section(store, SectionCreate(name="fuzz"))
    KEYS.update(mgmt=section.management_key.key, ing=section.ingestion_key.key)
    _APP.state.rejoin = AppState(settings=settings, store=store, temporal=env.client)


@schema.parametrize()
@hsettings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_fuzz_no_server_errors_and_schema_conformance(case: Any) -> None:
    """Generated requests (valid keys, fuzzed everything else) never get a 5xx and every answer matches the schema."""
    headers = dict(case.headers or {})
    headers.update({"authorization": f"Bearer {KEYS['mgmt']}", "x-rejoin-key": KEYS["mgmt"], "dy-api-key": KEYS["ing"]})
    case.headers = headers
    case.call_and_validate(checks=[
        not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance,
        response_headers_conformance,
    ])  # fmt: skip
