"""The server's Prometheus metrics, on a registry of its own.

A registry per server, not prometheus-client's global one: two apps in one process (tests,
a project embedding the app) each count their own requests, and nothing else that imports
prometheus-client leaks into `/metrics`.
"""

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from a fraction of a millisecond (health checks) to the 10 s a client gives up at.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """Requests by endpoint and status code, latency, queue wait, batch sizes, errors.

    Endpoints are route templates ("/v1/models/{name}:predict"), never raw paths, so a
    client cannot grow the number of series by requesting made-up URLs.
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "torchexp_requests",
            "HTTP requests answered, by endpoint and status code.",
            ("endpoint", "code"),
            registry=self.registry,
        )
        self.errors = Counter(
            "torchexp_errors",
            "HTTP requests answered with a 4xx or 5xx status, by code.",
            ("code",),
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "torchexp_request_seconds",
            "Seconds from a request's arrival to its answer, by endpoint.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "torchexp_queue_seconds",
            "Seconds a prediction request waited before its batch started.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "torchexp_inference_seconds",
            "Seconds the model took per batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "torchexp_batch_size",
            "Instances per batch run through the model.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "torchexp_queue_depth", "Prediction requests waiting for the model.", registry=self.registry
        )

    def record_request(self, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(endpoint, str(code)).inc()
        self.latency_seconds.labels(endpoint).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def render(self) -> tuple[bytes, str]:
        """Return the metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
