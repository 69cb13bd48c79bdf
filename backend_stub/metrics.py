"""Prometheus metrics of the backend: requests, latencies, campaigns and actions by state.

Request metrics are counted per process. Campaign and action counts are read
from the store at scrape time, so every replica reports the shared truth.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from backend_stub.store.base import Store

log = logging.getLogger(__name__)

_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        campaigns = GaugeMetricFamily(
            "hil_backend_campaigns", "Campaigns by state", labels=["state"]
        )
        actions = GaugeMetricFamily(
            "hil_backend_actions", "Vehicle update actions by state", labels=["state"]
        )
        vehicles = GaugeMetricFamily("hil_backend_vehicles", "Registered vehicles")
        try:
            counted = self.store.run(
                lambda tx: (tx.count_campaigns(), tx.count_actions(), tx.count_vehicles()),
                write=False,
            )
        except Exception:  # a failing scrape must not take the exporter down
            log.exception("cannot read counts for the metrics")
            return
        for campaign_state, number in sorted(counted[0].items()):
            campaigns.add_metric([campaign_state.value], number)
        for action_state, number in sorted(counted[1].items()):
            actions.add_metric([action_state.value], number)
        vehicles.add_metric([], counted[2])
        yield campaigns
        yield actions
        yield vehicles


class Metrics:
    """The backend's metrics in a registry of its own (several servers may share a process)."""

    def __init__(self, store: Store | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hil_backend_requests",
            "gRPC requests handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hil_backend_request_seconds",
            "gRPC request handling time, by method",
            ["method"],
            buckets=_BUCKETS_S,
            registry=self.registry,
        )
        if store is not None:
            self.registry.register(_StoreCollector(store))

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Record one handled request."""
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)
