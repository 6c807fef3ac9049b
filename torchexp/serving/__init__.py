"""Serving a release over HTTP: the `serve` command's library.

Modules, from the request inward:
    launcher    checks the release, binds the port, serves in this process or in workers
    server      one serving process: loads the release, runs uvicorn, stops gracefully
    workers     --workers N: N server processes on the one port
    protocol    the FastAPI app: KServe V1 routes, health, metrics, GET /
    page        what GET / answers: liveness to API clients, the project's page to browsers
    batcher     dynamic batching on one worker thread, off the event loop
    pipeline    one request's instances through the project's hooks and a predictor
    predictors  what runs a batch: the release's torch model, or an export in its
                format's runtime (torchexp.formats)
    metrics     Prometheus metrics on the server's own registry
    threads     how many threads inference may use
"""
