"""Native (exponential) histogram buckets of the business histograms. Pure.

With `--native-histograms`, each series also counts its observations in Prometheus's
exponential buckets: bucket `k` holds the values in (2^((k-1)/8), 2^(k/8)], schema 3,
so a bucket is 9.05% wider than the one below it (2^(1/8) = 1.0905). Why schema 3: it is
the finest schema whose buckets are no narrower than client_golang's default factor 1.1
(what `NativeHistogramBucketFactor: 1.1` picks), so a series costs what a Go exporter's
does; a quantile that histogram_quantile interpolates inside one bucket is off by less
than that bucket's width, 9.05% of the value at most. Zero and values below
ZERO_THRESHOLD (sessions that cost nothing, or lasted 0 s) go to the zero bucket.

Counted in a second pass over a batch's events, only when the option is on, so the
default mode pays nothing for it.
"""

import math
from bisect import bisect_left

SCHEMA = 3
ZERO_THRESHOLD = 2.0**-128
"""client_golang's default: only zero and denormal-small values are 'zero'."""
_BOUNDS = [2.0 ** (i / 2**SCHEMA) / 2 for i in range(2**SCHEMA)]
"""Upper bounds of the buckets of [0.5, 1) as math.frexp's mantissa, client_golang's way."""
_PER_OCTAVE = 2**SCHEMA


class Native:
    """Counts of one histogram's observations per exponential bucket, and at zero."""

    __slots__ = ("buckets", "zero")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.zero = 0

    def observe(self, value: float) -> None:
        if value <= ZERO_THRESHOLD:  # negatives cannot come from a valid event
            self.zero += 1
            return
        fraction, exponent = math.frexp(value)
        key = bisect_left(_BOUNDS, fraction) + (exponent - 1) * _PER_OCTAVE
        self.buckets[key] = self.buckets.get(key, 0) + 1

    def merge(self, other: "Native") -> None:
        self.zero += other.zero
        buckets = self.buckets
        for key, n in other.buckets.items():
            buckets[key] = buckets.get(key, 0) + n

    def spans(self) -> tuple[list[tuple[int, int]], list[int]]:
        """(spans as (offset, length), deltas): the protobuf's positive_span and
        positive_delta. A span's offset is the gap after the previous one (the first's,
        its first key); each delta is a bucket's count minus the previous bucket's."""
        spans: list[tuple[int, int]] = []
        deltas: list[int] = []
        previous_end, previous_count = 0, 0
        for key in sorted(self.buckets):
            count = self.buckets[key]
            if spans and key == previous_end:
                offset, length = spans[-1]
                spans[-1] = (offset, length + 1)
            else:
                spans.append((key - previous_end if spans else key, 1))
            previous_end = key + 1
            deltas.append(count - previous_count)
            previous_count = count
        return spans, deltas


def upper_bound(key: int) -> float:
    """The inclusive upper bound of bucket `key` (for tests and docs)."""
    return math.pow(2.0, key / _PER_OCTAVE)
