"""Envelopes end to end: one topic carrying every accepted envelope (and refused ones),
produced by librdkafka (confluent-kafka), read by a real worker on Tansu: exact totals."""

import json
import math

import pytest
from cloudevents.core.bindings.kafka import to_binary_event, to_structured_event

from consumer.broker import EmbeddedBroker
from consumer.envelope import Kind
from consumer.metrics import ConsumerMetrics
from consumer.synthetic import SessionFactory, encode
from schemas import CreateSessionResponseBody
from tests.conftest import TopicFactory, WorkerFactory, eventually, settings_for
from tests.corpus import expected_totals, series_values
from tests.librdkafka import Message, librdkafka_produce
from tests.test_envelope import TYPE, cloudevent, confluent, headers_of

PER_KIND = 40


def sample(m: ConsumerMetrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def structured(e: CreateSessionResponseBody, event_type: str = TYPE) -> Message:
    message = to_structured_event(cloudevent(data=_dict(e), event_type=event_type, id=e.id))
    return message.value, headers_of(message)


def binary(e: CreateSessionResponseBody, event_type: str = TYPE) -> Message:
    message = to_binary_event(cloudevent(data=_dict(e), event_type=event_type, id=e.id))
    return message.value, headers_of(message)


def _dict(e: CreateSessionResponseBody) -> object:
    """The event as the SDK takes data: a dict, which it writes as JSON itself."""
    return json.loads(encode(e))


def messages(events: list[CreateSessionResponseBody]) -> tuple[list[Message], int]:
    """Every accepted form, PER_KIND each, then refused ones; returns (messages, counted)."""
    chunks = [events[i * PER_KIND : (i + 1) * PER_KIND] for i in range(6)]
    out: list[Message] = [(encode(e), []) for e in chunks[0]]
    out += [(confluent(encode(e), schema_id=0x80000000 + i), []) for i, e in enumerate(chunks[1])]
    out += [(encode(e), [("__value_schema_id", b"\x01" + bytes(16))]) for e in chunks[2]]
    out += [structured(e) for e in chunks[3]]
    out += [binary(e) for e in chunks[4]]
    out += [binary(e, "com.example.other") for e in chunks[5][: PER_KIND // 2]]
    out += [structured(e, "com.example.other") for e in chunks[5][PER_KIND // 2 :]]
    out += [(b"\x01" + confluent(b"{}")[1:], []), (b"\x00\x00", [])]
    return out, 5 * PER_KIND


@pytest.mark.broker
async def test_every_envelope_is_counted_by_format_with_exact_totals(
    broker: EmbeddedBroker, new_topic: TopicFactory, start_worker: WorkerFactory
) -> None:
    topic, dlq = await new_topic(partitions=3), await new_topic(partitions=1)
    events = list(SessionFactory(seed=31).events(6 * PER_KIND))
    sent, counted = messages(events)
    run = await start_worker(
        settings_for(broker.bootstrap, topic, dlq_topic=dlq, cloudevents_type=TYPE)
    )
    m = run.worker.metrics

    await librdkafka_produce(broker.bootstrap, topic, sent)
    total = len(sent)
    await eventually(
        lambda: (
            sum(
                sample(m, "session_consumer_messages_total", outcome=o)
                for o in ("counted", "invalid", "skipped", "duplicate")
            )
            >= total
        )
    )

    assert run.counted() == counted
    assert sample(m, "session_consumer_messages_total", outcome="skipped") == PER_KIND
    assert sample(m, "session_consumer_messages_total", outcome="duplicate") == 0
    assert sample(m, "session_consumer_invalid_total", reason="unknown_magic_byte") == 1
    assert sample(m, "session_consumer_invalid_total", reason="bad_envelope") == 1
    assert sample(m, "session_consumer_dead_lettered_total") == 2
    formats = {
        k.value: sample(m, "session_consumer_value_format_total", format=k.value) for k in Kind
    }
    assert formats == {
        "json": PER_KIND,
        "confluent": 2 * PER_KIND,
        "cloudevents_structured": PER_KIND + PER_KIND // 2,
        "cloudevents_binary": PER_KIND + PER_KIND // 2,
    }
    want = expected_totals(events[:counted])
    await run.scrape()  # a served scrape publishes what was counted
    got = series_values(m.registry)
    assert got["llm_sessions_total"] == {k: w.sessions for k, w in want.items()}
    for key, w in want.items():
        assert math.isclose(got["llm_session_cost_total"][key], w.cost, rel_tol=1e-9)
        assert got["llm_session_tokens_total"][key] == w.tokens
