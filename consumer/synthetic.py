"""Seeded, realistic session-created events for the demo, `produce` and the tests.

50 workspaces x 5 projects by default, one session in ten without a project,
token counts and durations from long-tailed distributions, costs priced per
token by model: about 500 bytes of JSON each, like the real thing.
"""

import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import msgspec

from schemas import CreateSessionBilling, CreateSessionResponseBody, CreateSessionSessionsUsage

# (input, output) USD per token, roughly today's list prices.
_MODELS = {
    "gpt-4o": (2.5e-6, 10e-6),
    "gpt-4o-mini": (0.15e-6, 0.6e-6),
    "claude-sonnet": (3e-6, 15e-6),
    "claude-haiku": (0.8e-6, 4e-6),
    "llama-3-70b": (0.6e-6, 0.8e-6),
}
_TAGS = ("prod", "staging", "chat", "rag", "agent", "eval", "batch", "support", "search")

ENCODER = msgspec.json.Encoder()


def workspace_ids(count: int) -> list[str]:
    return [f"ws-{i:04d}" for i in range(count)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SessionFactory:
    """The same seed gives the same events (ids, workspaces, amounts, durations); each is
    stamped as updated when it is made, by `clock`, so a dashboard sees fresh events."""

    def __init__(
        self,
        seed: int = 0,
        workspaces: int = 50,
        projects: int = 5,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._rng = random.Random(seed)
        self._workspaces = workspace_ids(workspaces)
        self._projects = [f"proj-{i:02d}" for i in range(projects)]
        self._clock = clock

    def event(self) -> CreateSessionResponseBody:
        rng = self._rng
        model = rng.choice(list(_MODELS))
        price_in, price_out = _MODELS[model]
        prompt = float(int(rng.lognormvariate(7.5, 1.0)))
        completion = float(int(rng.lognormvariate(6.0, 1.0)))
        duration_ms = round(rng.lognormvariate(10.0, 1.5), 2)
        # Once the start's offset into a fixed hour; still drawn, so every later draw (ids,
        # workspaces) of a seed stays what it always was.
        rng.uniform(0, 3600)
        updated = self._clock()
        workspace = rng.choice(self._workspaces)
        project = None if rng.random() < 0.1 else rng.choice(self._projects)
        return CreateSessionResponseBody(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            external_id=f"ext-{rng.getrandbits(48):012x}",
            duration=duration_ms,
            contact_ids=[f"contact-{rng.getrandbits(32):08x}" for _ in range(rng.randint(0, 3))],
            billing=CreateSessionBilling(
                input_cost=round(prompt * price_in, 8),
                output_cost=round(completion * price_out, 8),
                total_cost=round(prompt * price_in + completion * price_out, 8),
            ),
            usage=CreateSessionSessionsUsage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
            traces_count=float(rng.randint(1, 40)),
            tags=[model, *rng.sample(_TAGS, rng.randint(1, 3))],
            workspace_id=workspace,
            project_id=project,
            started_at=updated - timedelta(milliseconds=duration_ms),
            updated_at=updated,
        )

    def events(self, count: int | None = None) -> Iterator[CreateSessionResponseBody]:
        n = 0
        while count is None or n < count:
            yield self.event()
            n += 1


def encode(event: CreateSessionResponseBody) -> bytes:
    return ENCODER.encode(event)


# Values a misbehaving producer sends, one per reason the decoder reports.
BAD_VALUES: tuple[bytes, ...] = (
    b"not json at all",
    b'{"id": "x", "workspaceId": "w"}',
    b"[1, 2, 3]",
    b'{"id":"bad-neg","externalId":"e","duration":-5,"contactIds":[],"billing":{"inputCost":1,'
    b'"outputCost":1,"totalCost":2},"usage":{"promptTokens":1,"completionTokens":1,'
    b'"totalTokens":2},"tracesCount":1,"tags":[],"workspaceId":"w"}',
)
