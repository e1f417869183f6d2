"""Prometheus metrics, in a registry of the app's own (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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

    def watch(self, engine) -> None:
        """Report the engine's batch and prefix-cache figures, read at every scrape (nothing is counted per
        step)."""
        self.registry.register(_EngineCollector(engine))


class _EngineCollector:
    def __init__(self, engine):
        self.scheduler, self.cache = engine.scheduler, engine.cache

    def collect(self):
        s = self.scheduler
        if s is not None:
            yield GaugeMetricFamily("rnnlm_batch_rows", "Sequences in the running batch", value=s.batch_rows)
            yield GaugeMetricFamily("rnnlm_queued_requests", "Requests waiting for the batch", value=s.queued)
            yield CounterMetricFamily("rnnlm_batch_steps", "Batch steps run", value=s.steps)
            yield CounterMetricFamily("rnnlm_batch_rows_stepped", "Sequences stepped, summed over steps "
                                      "(÷ rnnlm_batch_steps_total = mean batch size)", value=s.rows_stepped)
        cache = self.cache
        if cache is not None:
            yield GaugeMetricFamily("rnnlm_prefix_cache_entries", "Prompts whose state is cached", value=len(cache))
            yield GaugeMetricFamily("rnnlm_prefix_cache_bytes", "Memory the prefix cache holds (states, logits, keys)",
                                    value=cache.bytes)
            yield CounterMetricFamily("rnnlm_prefix_cache_hits", "Lookups that found a cached prefix", value=cache.hits)
            yield CounterMetricFamily("rnnlm_prefix_cache_misses", "Lookups that found none", value=cache.misses)
            yield CounterMetricFamily("rnnlm_prefix_cache_hit_characters",
                                      "Prompt characters not read again thanks to the cache", value=cache.hit_chars)
