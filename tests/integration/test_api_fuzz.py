"""Fuzz the API from its own OpenAPI spec (schemathesis 4.x): every operation, valid
and invalid inputs, against a real `traitflow api` process reading a real Redis.

Done-when of the serving issue: no 5xx, whatever is sent. Where the spec documents
the answer, the response must also conform to it (status, content type, schema,
headers). Examples per operation and mode are few so the test stays well under a
minute; the spec is the running server's, so a new endpoint is fuzzed without
touching this file.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from tests.integration.conftest import create_key
from tests.integration.workers import running_api
from tests.unit.api_support import bearer
from traitflow.config import Settings

pytestmark = pytest.mark.integration

EXAMPLES = 40
"""Examples per operation and generation mode."""

SCHEMA_CHECKS = [
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
"""Conformance checked for positive cases (a negative case may be answered by an
error the spec does not list, e.g. a 400 for a header it cannot describe)."""


@pytest.fixture(scope="module")
def fuzzed(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings]]:
    """An API process with keys of its own in Redis (its URL, its settings): what the
    fuzzer makes through it (computed attributes, merge policies, jobs) reaches no
    worker of the session's, whose rules and profiles other tests read."""
    own = settings.isolated(f"tffuzz-{uuid.uuid4().hex[:8]}", home=tmp_path_factory.mktemp("fuzz"))
    with running_api(own, "api-fuzz") as url:
        yield url, own


@pytest.fixture(scope="module")
def auth_headers(fuzzed: tuple[str, Settings]) -> dict[str, str]:
    """The one place the fuzzer gets its key: an admin key whose rate limit the fuzzer
    cannot reach."""
    _, own = fuzzed
    return bearer(create_key(own, "fuzzer", admin=True, rate_per_s=100_000.0, burst=100_000))


@pytest.fixture(scope="module")
def schema(fuzzed: tuple[str, Settings]) -> schemathesis.BaseSchema:
    url, _ = fuzzed
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: GenerationMode,
    headers: dict[str, str],
    statuses: Counter[int],
    path_parameters: dict[str, str] | None = None,
) -> None:
    """Run `EXAMPLES` cases of `operation` in `mode`, counting the answers."""
    checks = [not_a_server_error] + (SCHEMA_CHECKS if mode is GenerationMode.POSITIVE else [])

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: schemathesis.Case[Any]) -> None:
        sent = dict(case.headers or {}) | headers
        response = case.call_and_validate(headers=sent, checks=checks, timeout=10)
        statuses[response.status_code] += 1

    try:
        one()
    except Unsatisfiable as exc:
        # no invalid input exists for an operation that takes none (`/healthz`)
        if mode is GenerationMode.POSITIVE or has_inputs(operation):
            raise Unsatisfiable(f"{operation.label}, {mode.value} cases: {exc}") from exc


def has_inputs(operation: schemathesis.APIOperation[Any, Any, Any, Any]) -> bool:
    return any(
        len(parameters) > 0
        for parameters in (
            operation.path_parameters,
            operation.query,
            operation.headers,
            operation.cookies,
            operation.body,
        )
    )


def test_every_operation_survives_fuzzing(
    schema: schemathesis.BaseSchema, auth_headers: dict[str, str], settings: Settings
) -> None:
    results = list(schema.get_all_operations())
    unusable = [result.err() for result in results if not isinstance(result, Ok)]
    assert not unusable, f"operations the spec does not describe well enough: {unusable}"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert operations, "the spec lists no operation"
    answered: dict[str, Counter[int]] = {}
    for operation in operations:
        statuses = answered[operation.label] = Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, auth_headers, statuses)
        if "collection" in {parameter.name for parameter in operation.path_parameters}:
            # a random collection is a 404 before the store is asked: name a real one
            users = {"collection": next(iter(settings.collections))}
            fuzz(operation, GenerationMode.POSITIVE, auth_headers, statuses, users)
    assert all(answered.values()), f"operations without a case: {answered}"
    everything = sum(answered.values(), Counter[int]())
    assert not [status for status in everything if status >= 500], answered
    # past authentication: the endpoints themselves answered
    assert set(everything) - {401, 403}, answered
