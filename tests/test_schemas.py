"""schemas/session.py: the Structs decode the documented event, camelCase in, snake_case out."""

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from schemas import CreateSessionBilling, CreateSessionResponseBody, CreateSessionSessionsUsage

# The example of /work/shared/seed/CreateSessionResponseBody.md, as the JSON a producer sends.
SEED_EXAMPLE: dict[str, Any] = {
    "id": "<id>",
    "externalId": "<id>",
    "duration": 6933.34,
    "contactIds": ["<value>"],
    "billing": {"inputCost": 5381.65, "outputCost": 1890.96, "totalCost": 375.37},
    "usage": {"promptTokens": 2485.6, "completionTokens": 8301.97, "totalTokens": 9741.68},
    "tracesCount": 8625.61,
    "tags": ["<value>"],
    "workspaceId": "<id>",
}

REQUIRED_TOP_LEVEL = [
    "id",
    "externalId",
    "duration",
    "contactIds",
    "billing",
    "usage",
    "tracesCount",
    "tags",
    "workspaceId",
]
REQUIRED_NESTED = [
    ("billing", "inputCost"),
    ("billing", "outputCost"),
    ("billing", "totalCost"),
    ("usage", "promptTokens"),
    ("usage", "completionTokens"),
    ("usage", "totalTokens"),
]


def example(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_EXAMPLE)
    body.update(changes)
    return body


def decode(body: dict[str, Any]) -> CreateSessionResponseBody:
    return msgspec.json.decode(json.dumps(body).encode(), type=CreateSessionResponseBody)


def test_documented_example_decodes_with_snake_case_attributes() -> None:
    event = decode(SEED_EXAMPLE)

    assert event == CreateSessionResponseBody(
        id="<id>",
        external_id="<id>",
        duration=6933.34,
        contact_ids=["<value>"],
        billing=CreateSessionBilling(input_cost=5381.65, output_cost=1890.96, total_cost=375.37),
        usage=CreateSessionSessionsUsage(
            prompt_tokens=2485.6, completion_tokens=8301.97, total_tokens=9741.68
        ),
        traces_count=8625.61,
        tags=["<value>"],
        workspace_id="<id>",
    )
    # Placeholder values break the arithmetic (totalCost < inputCost + outputCost): still valid.
    assert event.billing.total_cost < event.billing.input_cost + event.billing.output_cost


def test_encoding_writes_camel_case_keys() -> None:
    encoded = json.loads(msgspec.json.encode(decode(example(projectId="p"))))

    assert set(encoded) == {*SEED_EXAMPLE, "projectId", "startedAt", "updatedAt"}
    assert set(encoded["billing"]) == {"inputCost", "outputCost", "totalCost"}
    assert set(encoded["usage"]) == {"promptTokens", "completionTokens", "totalTokens"}


def test_absent_optional_fields_are_none() -> None:
    event = decode(SEED_EXAMPLE)

    assert event.project_id is None
    assert event.started_at is None
    assert event.updated_at is None


def test_present_optional_fields_are_read() -> None:
    event = decode(
        example(
            projectId="proj-1",
            startedAt="2026-11-24T10:00:00.000Z",
            updatedAt="2026-11-24T10:00:06.933Z",
        )
    )

    assert event.project_id == "proj-1"
    assert event.started_at == datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert event.updated_at == datetime(2026, 11, 24, 10, 0, 6, 933000, tzinfo=UTC)


def test_explicit_null_optional_fields_are_none() -> None:
    event = decode(example(projectId=None, startedAt=None, updatedAt=None))

    assert (event.project_id, event.started_at, event.updated_at) == (None, None, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-24T10:00:00.000Z", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, 0, tzinfo=UTC)),
        (
            "2026-11-24T12:00:00.000+02:00",
            datetime(2026, 11, 24, 12, 0, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_timestamps_become_timezone_aware_datetimes(raw: str, expected: datetime) -> None:
    event = decode(example(startedAt=raw, updatedAt=raw))

    for value in (event.started_at, event.updated_at):
        assert value == expected
        assert value is not None
        assert value.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("field", ["startedAt", "updatedAt"])
def test_timestamp_without_zone_is_rejected(field: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="timezone") as err:
        decode(example(**{field: "2026-11-24T10:00:00.000"}))

    assert f"$.{field}" in str(err.value)


def test_unknown_fields_are_ignored() -> None:
    body = example(newTopLevelField={"nested": [1, 2]}, model="gpt-4o")
    body["billing"]["currency"] = "USD"
    body["usage"]["cachedTokens"] = 12

    assert decode(body) == decode(SEED_EXAMPLE)


@pytest.mark.parametrize("number", [7, 7.0, 7.5, 0, 10**15])
def test_integer_and_float_json_numbers_are_both_accepted(number: float) -> None:
    body = example(duration=number, tracesCount=number)
    body["billing"] = {"inputCost": number, "outputCost": number, "totalCost": number}
    body["usage"] = {"promptTokens": number, "completionTokens": number, "totalTokens": number}

    event = decode(body)

    values = [
        event.duration,
        event.traces_count,
        event.billing.input_cost,
        event.billing.output_cost,
        event.billing.total_cost,
        event.usage.prompt_tokens,
        event.usage.completion_tokens,
        event.usage.total_tokens,
    ]
    assert values == [float(number)] * 8
    assert all(isinstance(v, float) for v in values)


@pytest.mark.parametrize("field", REQUIRED_TOP_LEVEL)
def test_required_top_level_field_missing_is_rejected(field: str) -> None:
    body = example()
    del body[field]

    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{field}`"):
        decode(body)


@pytest.mark.parametrize(("parent", "field"), REQUIRED_NESTED)
def test_required_billing_and_usage_field_missing_is_rejected(parent: str, field: str) -> None:
    body = example()
    del body[parent][field]

    with pytest.raises(msgspec.ValidationError) as err:
        decode(body)

    assert str(err.value) == f"Object missing required field `{field}` - at `$.{parent}`"


def test_structs_are_frozen() -> None:
    event = decode(SEED_EXAMPLE)

    with pytest.raises(AttributeError):
        event.duration = 1.0  # type: ignore[misc]
