"""The ceiling: a raw aiokafka `getmany` loop that only counts records.

Run as its own process by the benchmark, with `bench_records_total` on /metrics
so it is timed the same way as the others.
"""

from aiokafka import AIOKafkaConsumer
from prometheus_client import Counter

from bench import contender

RECORDS = Counter("bench_records", "Records read.")


async def count_records(consumer: AIOKafkaConsumer) -> None:
    while True:
        batch = await consumer.getmany(timeout_ms=500)
        RECORDS.inc(sum(map(len, batch.values())))


if __name__ == "__main__":
    contender.main(count_records)
