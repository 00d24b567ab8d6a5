"""Record batches a broken producer or a bit flip could leave in a partition, produced raw.

Built with aiokafka's own batch builder, then damaged: a CRC that no longer matches, a
compression codec id no client knows (with a valid CRC), or records whose lengths lie
(with a valid CRC). Sent in a Produce request of our own, since no client library would
send them; Tansu stores the batch as given.
"""

import struct
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaClient, TopicPartition
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder

CRC_AT = 17
"""Offset of the CRC in a v2 batch; it covers everything from the attributes (21) on."""
ATTRIBUTES_AT = 21


def batch(values: Sequence[bytes]) -> bytearray:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    now = int(time.time() * 1000)
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=now, key=None, value=value, headers=[])
    return bytearray(builder.build())


def _seal(raw: bytearray) -> bytes:
    struct.pack_into(">I", raw, CRC_AT, crc32c(bytes(raw[ATTRIBUTES_AT:])))
    return bytes(raw)


def bad_crc(values: Sequence[bytes]) -> bytes:
    raw = batch(values)
    raw[-2] ^= 0xFF  # inside the last record's value; the CRC is left as it was
    return bytes(raw)


def unknown_codec(values: Sequence[bytes]) -> bytes:
    raw = batch(values)
    raw[ATTRIBUTES_AT + 1] |= 0x07  # codec bits: 0-4 are defined, 7 is not
    return _seal(raw)


def corrupt_records(values: Sequence[bytes]) -> bytes:
    raw = batch(values)
    raw[61] = 0x7F  # the first record's length varint: now far past the batch's end
    return _seal(raw)


async def produce_raw(bootstrap: str, topic: str, partition: int, record_batch: bytes) -> int:
    """Produce one batch as is to `topic`/`partition`; returns the broker's error code."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        client.add_topic(topic)
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(None, 1, 10000, [(topic, [(partition, record_batch)])])
        response = await client.send(leader, request)
        ((_, partitions),) = response.topics
        code: int = partitions[0][1]
        return code
    finally:
        await client.close()


def not_compressed(values: Sequence[bytes], codec: int) -> bytes:
    """Records marked compressed with `codec` (1 gzip ... 4 zstd) but stored plain."""
    raw = batch(values)
    raw[ATTRIBUTES_AT + 1] |= codec
    return _seal(raw)
