"""The naive consumer: what one typically writes by hand, as a baseline.

`json.loads` per record and per-event prometheus-client updates of the same
metric set session-metrics exports (8 counters and 3 histograms per workspace
and project, same buckets). It uses the same `getmany` batches as the others,
so the difference measured is the per-event work, not the fetch loop.
"""

import json

from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter, Histogram

from bench import contender
from consumer.settings import (
    DEFAULT_COST_BUCKETS,
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_TOKENS_BUCKETS,
)

LABELS = ("workspace_id", "project_id")


def _buckets(raw: str) -> list[float]:
    return [float(b) for b in raw.split(",")]


MESSAGES = Counter("session_consumer_messages", "Messages read, by outcome.", ["outcome"])
SESSIONS = Counter("llm_sessions", "Sessions created.", LABELS)
INPUT_COST = Counter("llm_session_input_cost", "Sum of billing.inputCost.", LABELS)
OUTPUT_COST = Counter("llm_session_output_cost", "Sum of billing.outputCost.", LABELS)
COST = Counter("llm_session_cost", "Sum of billing.totalCost.", LABELS)
PROMPT = Counter("llm_session_prompt_tokens", "Sum of usage.promptTokens.", LABELS)
COMPLETION = Counter("llm_session_completion_tokens", "Sum of usage.completionTokens.", LABELS)
TOKENS = Counter("llm_session_tokens", "Sum of usage.totalTokens.", LABELS)
TRACES = Counter("llm_session_traces", "Sum of tracesCount.", LABELS)
DURATION = Histogram(
    "llm_session_duration_seconds", "Session duration.", LABELS,
    buckets=_buckets(DEFAULT_DURATION_BUCKETS),
)  # fmt: skip
TOKENS_PER = Histogram(
    "llm_session_tokens_per_session", "usage.totalTokens per session.", LABELS,
    buckets=_buckets(DEFAULT_TOKENS_BUCKETS),
)  # fmt: skip
COST_PER = Histogram(
    "llm_session_cost_per_session", "billing.totalCost per session.", LABELS,
    buckets=_buckets(DEFAULT_COST_BUCKETS),
)  # fmt: skip


def count(value: bytes) -> None:
    body = json.loads(value)
    labels = (body["workspaceId"], body.get("projectId") or "")
    billing, usage = body["billing"], body["usage"]
    SESSIONS.labels(*labels).inc()
    INPUT_COST.labels(*labels).inc(billing["inputCost"])
    OUTPUT_COST.labels(*labels).inc(billing["outputCost"])
    COST.labels(*labels).inc(billing["totalCost"])
    PROMPT.labels(*labels).inc(usage["promptTokens"])
    COMPLETION.labels(*labels).inc(usage["completionTokens"])
    TOKENS.labels(*labels).inc(usage["totalTokens"])
    TRACES.labels(*labels).inc(body["tracesCount"])
    DURATION.labels(*labels).observe(body["duration"] / 1000)
    TOKENS_PER.labels(*labels).observe(usage["totalTokens"])
    COST_PER.labels(*labels).observe(billing["totalCost"])
    MESSAGES.labels("counted").inc()


async def count_sessions(consumer: AIOKafkaConsumer) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                count(record.value)


if __name__ == "__main__":
    contender.main(count_sessions)
