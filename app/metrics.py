"""Prometheus metrics, in a registry of the app's own (so several apps in one process do not collide).

Two kinds of figures: the HTTP process's own (requests by route and status, latency, characters generated and
scored), and the engine's (batch, queue, prefix cache), which exist once for the whole server and are asked
of the engine process at every scrape. With several HTTP workers (``RNNLM_WORKERS`` > 1) a scrape reaches one
of them at random, so the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at a directory all workers write their HTTP
figures to, and every scrape reports their sum (prometheus_client's multiprocess mode) and the one engine's.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["ENGINE_FIGURES", "Metrics"]

# (kind, metric name, help, key in the engine's figures)
ENGINE_FIGURES = [
    ("gauge", "rnnlm_batch_rows", "Sequences in the running batch", "batch_rows"),
    ("gauge", "rnnlm_queued_requests", "Requests waiting for the batch", "queued"),
    ("gauge", "rnnlm_engine_requests", "Requests in the engine (queued or running)", "requests_in_engine"),
    (
        "counter",
        "rnnlm_engine_requests_served",
        "Requests the engine finished (since it last started)",
        "requests_served",
    ),
    (
        "counter",
        "rnnlm_engine_busy_seconds",
        "Time the engine spent running the model (÷ wall time = its load)",
        "busy_seconds",
    ),
    (
        "counter",
        "rnnlm_engine_characters_read",
        "Characters the model read for requests: uncached prompts, contexts and scored texts",
        "chars_read",
    ),
    ("counter", "rnnlm_state_tokens_read", "State tokens taken back from clients", "state_tokens_read"),
    ("counter", "rnnlm_batch_steps", "Batch steps run", "batch_steps"),
    (
        "counter",
        "rnnlm_batch_rows_stepped",
        "Sequences stepped, summed over steps (÷ rnnlm_batch_steps_total = mean batch size)",
        "batch_rows_stepped",
    ),
    (
        "counter",
        "rnnlm_batch_rows_put_aside",
        "Sequences put aside to make room for another request's (each rejoins later as it was)",
        "batch_rows_put_aside",
    ),
    ("gauge", "rnnlm_prefix_cache_entries", "Prompts whose state is cached", "cache_entries"),
    ("gauge", "rnnlm_prefix_cache_bytes", "Memory the prefix cache holds (states, logits, keys)", "cache_bytes"),
    ("counter", "rnnlm_prefix_cache_hits", "Lookups that found a cached prefix", "cache_hits"),
    ("counter", "rnnlm_prefix_cache_misses", "Lookups that found none", "cache_misses"),
    (
        "counter",
        "rnnlm_prefix_cache_hit_characters",
        "Prompt characters not read again thanks to the cache",
        "cache_hit_chars",
    ),
]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rnnlm_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rnnlm_request_duration_seconds",
            "Time to the end of the response, by route",
            ["route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.tokens_generated = Counter("rnnlm_generated_tokens", "Characters generated", registry=self.registry)
        self.chars_scored = Counter("rnnlm_scored_characters", "Characters scored", registry=self.registry)
        self.shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # several workers write one directory

    def exposition(self, engine_figures: dict, engine_ready: bool) -> bytes:
        """The Prometheus text: the HTTP figures (this process's, or with several workers the sum over all of
        them), then the engine's ``engine_figures`` as read just now."""
        if self.shared:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = self.registry
        engine = CollectorRegistry()
        engine.register(_EngineCollector(engine_figures, engine_ready))
        return generate_latest(registry) + generate_latest(engine)

    def close(self) -> None:
        """Shared mode: this worker is going; its live gauges stop counting."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid())


class _EngineCollector:
    def __init__(self, figures: dict, ready: bool):
        self.figures = figures
        self.ready = ready

    def collect(self):
        yield GaugeMetricFamily("rnnlm_model_loaded", "1 while the engine is ready", value=int(self.ready))
        for kind, name, help_text, key in ENGINE_FIGURES:
            if key in self.figures:
                family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
                yield family(name, help_text, value=self.figures[key])
