"""Prometheus metrics, in a registry of the app's own (so several apps in one process do not collide).

With several worker processes (``RNNLM_WORKERS`` > 1) a scrape reaches one worker at random, so the CLI points
``PROMETHEUS_MULTIPROC_DIR`` at a directory all workers write their values to, and every scrape reports the
sum over the workers (prometheus_client's multiprocess mode). The engine's batch and cache figures, read from
live objects in one process, are then published by each worker once a second (``PUBLISH_EVERY_S``) and on
every scrape it answers, as gauges summed over live workers and counters summed over all.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["Metrics", "PUBLISH_EVERY_S"]

PUBLISH_EVERY_S = 1.0


def _engine_figures(engine) -> list[tuple[str, str, str, float]]:
    """(kind, name, help, value) for the engine's batch and prefix-cache figures, read now."""
    figures = []
    s = engine.scheduler
    if s is not None:
        figures += [
            ("gauge", "rnnlm_batch_rows", "Sequences in the running batch", s.batch_rows),
            ("gauge", "rnnlm_queued_requests", "Requests waiting for the batch", s.queued),
            ("counter", "rnnlm_batch_steps", "Batch steps run", s.steps),
            ("counter", "rnnlm_batch_rows_stepped", "Sequences stepped, summed over steps "
             "(÷ rnnlm_batch_steps_total = mean batch size)", s.rows_stepped),
        ]
    cache = engine.cache
    if cache is not None:
        figures += [
            ("gauge", "rnnlm_prefix_cache_entries", "Prompts whose state is cached", len(cache)),
            ("gauge", "rnnlm_prefix_cache_bytes", "Memory the prefix cache holds (states, logits, keys)", cache.bytes),
            ("counter", "rnnlm_prefix_cache_hits", "Lookups that found a cached prefix", cache.hits),
            ("counter", "rnnlm_prefix_cache_misses", "Lookups that found none", cache.misses),
            ("counter", "rnnlm_prefix_cache_hit_characters", "Prompt characters not read again thanks to the cache",
             cache.hit_chars),
        ]
    return figures


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # several workers write one directory
        self.requests = Counter("rnnlm_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("rnnlm_request_duration_seconds", "Time to the end of the response, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.tokens_generated = Counter("rnnlm_generated_tokens", "Characters generated", registry=self.registry)
        self.chars_scored = Counter("rnnlm_scored_characters", "Characters scored", registry=self.registry)
        self.model_loaded = Gauge("rnnlm_model_loaded", "1 once the model is loaded (in every live worker)",
                                  registry=self.registry, multiprocess_mode="livemin")
        self._engine = None
        self._published: dict[str, tuple[Gauge | Counter, float]] = {}  # shared mode: metric, value published

    def watch(self, engine) -> None:
        """Report the engine's batch and prefix-cache figures: read at every scrape in one process (nothing is
        counted per step); with several workers, published (:meth:`publish`)."""
        self._engine = engine
        if self.shared:
            self.publish()
        else:
            self.registry.register(_EngineCollector(engine))

    def publish(self) -> None:
        """Shared mode: write the engine's current figures where every worker's scrape reads them."""
        if not self.shared or self._engine is None:
            return
        for kind, name, help_text, value in _engine_figures(self._engine):
            if name not in self._published:
                metric = (Gauge(name, help_text, registry=None, multiprocess_mode="livesum") if kind == "gauge"
                          else Counter(name, help_text, registry=None))
                self._published[name] = (metric, 0.0)
            metric, before = self._published[name]
            if kind == "gauge":
                metric.set(value)
            elif value > before:
                metric.inc(value - before)
            self._published[name] = (metric, float(value))

    def exposition(self) -> bytes:
        """The Prometheus text: this process's registry, or with several workers the sum over all of them."""
        if not self.shared:
            return generate_latest(self.registry)
        self.publish()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def close(self) -> None:
        """Shared mode: this worker is going; its live gauges stop counting."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        for kind, name, help_text, value in _engine_figures(self.engine):
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, help_text, value=value)
