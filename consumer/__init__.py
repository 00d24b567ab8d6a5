"""session-metrics: session-created events from Kafka to Prometheus metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("session-metrics")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
