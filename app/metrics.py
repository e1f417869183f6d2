"""Prometheus metrics, in a registry of the app's own (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rnnlm_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("rnnlm_request_duration_seconds", "Time to the end of the response, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tokens_generated = Counter("rnnlm_generated_tokens", "Characters generated", registry=self.registry)
        self.chars_scored = Counter("rnnlm_scored_characters", "Characters scored", registry=self.registry)
        self.model_loaded = Gauge("rnnlm_model_loaded", "1 once the model is loaded", registry=self.registry)
