"""The two forms a histogram takes in Prometheus, and which one `reconcile` compares. Pure.

A Prometheus with native histograms on keeps a histogram scraped in protobuf as one native
series (`llm_session_duration_seconds`, no `_bucket`, `_count` or `_sum`) unless its scrape
config says `scrape_classic_histograms: true`, when it keeps both forms of each scrape.
Native buckets (powers of 2^(1/8)) are not the classic `le` buckets, so of a native
histogram reconcile compares what both forms have: the count and the sum
(histogram_count, histogram_sum), reported as the `_count` and `_sum` samples the classic
form gives, so that scripts read one name whichever form Prometheus keeps.

Which form counts is decided per worker lifetime, since a Prometheus can hold both: each
scrape in both forms (then the classic series, buckets and all, hold everything), or some
lifetimes in one form and some in the other (workers rolled out with
`--native-histograms`, or Prometheus's feature turned on, within the range). A lifetime's
count only grows, so the form whose last sample counted more is the later one, and its
count and sum are that lifetime's.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from consumer.metrics import HISTOGRAMS
from consumer.reconcile import Sample

Series = frozenset[tuple[str, str]]
"""A series' labels (without __name__): one target, one (workspace, project)."""
Lifetime = tuple[Series, int]
"""A series, and which lifetime of its target (0 unless the target restarted in place)."""


@dataclass(frozen=True, slots=True)
class Last:
    """A lifetime's last count and sum in one form."""

    count: float
    sum: float


_NONE = Last(-math.inf, -math.inf)


@dataclass(slots=True)
class Forms:
    """What Prometheus holds of one histogram family, per lifetime, in each form."""

    classic: dict[Lifetime, Last] = field(default_factory=dict)
    native: dict[Lifetime, Last] = field(default_factory=dict)

    def classic_holds_all(self) -> bool:
        """Every lifetime held natively is held as far in the classic form: the classic
        series alone account for everything (`scrape_classic_histograms: true`)."""
        return all(self.classic.get(k, _NONE).count >= n.count for k, n in self.native.items())

    def totals(self, name: str) -> dict[Sample, float]:
        """`<name>_count` and `<name>_sum` per (workspace_id, project_id): each lifetime's
        later form, summed over lifetimes."""
        parts: dict[Sample, list[float]] = {}
        for key in self.classic.keys() | self.native.keys():
            last = max(
                self.classic.get(key, _NONE),
                self.native.get(key, _NONE),
                key=lambda held: (held.count, held.sum),
            )
            labels = dict(key[0])
            workspace, project = labels.get("workspace_id", ""), labels.get("project_id", "")
            parts.setdefault((f"{name}_count", workspace, project, ""), []).append(last.count)
            parts.setdefault((f"{name}_sum", workspace, project, ""), []).append(last.sum)
        return {sample: math.fsum(values) for sample, values in parts.items()}


def as_held(
    log: dict[Sample, float], held: dict[Sample, float], forms: Mapping[str, Forms]
) -> list[str]:
    """Make `log` and `held` compare each histogram in the form Prometheus keeps it;
    `forms`: the families Prometheus holds native series of. A family some lifetimes of
    which are held natively only is compared by count and sum, its buckets left out of
    both sides; one that Prometheus holds in neither form is left out altogether. Returns
    a line for each family left out, in whole or in part."""
    lines = []
    for name, _, _, _ in HISTOGRAMS:
        classic = (f"{name}_bucket", f"{name}_count", f"{name}_sum")
        family = forms.get(name)
        if family is not None and family.native and not family.classic_holds_all():
            _drop(held, classic)
            _drop(log, classic[:1])
            held.update(family.totals(name))
            some = " for some worker lifetimes" if family.classic else ""
            lines.append(
                f"session-metrics: warning: Prometheus holds {name} as a native histogram"
                f"{some}: its count and sum are compared, not its buckets (native buckets are "
                "not the le buckets; scrape_classic_histograms: true keeps both)"
            )
        elif not any(k[0] in classic for k in held) and any(k[0] in classic for k in log):
            _drop(log, classic)
            lines.append(
                f"session-metrics: warning: Prometheus holds no {name} series, classic or "
                "native: its buckets, count and sum are not compared"
            )
    return lines


def _drop(samples: dict[Sample, float], names: tuple[str, ...]) -> None:
    for key in [k for k in samples if k[0] in names]:
        del samples[key]
