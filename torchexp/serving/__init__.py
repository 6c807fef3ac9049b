"""Serving a release over HTTP: the `serve` command's library.

Modules, from the request inward:
    server      binds the port, loads the release, runs uvicorn, stops gracefully
    protocol    the FastAPI app: KServe V1 routes, health, metrics, GET /
    page        what GET / answers: liveness to API clients, the project's page to browsers
    batcher     dynamic batching on one worker thread, off the event loop
    answers     requests' instances through the pipeline to their JSON answers: the path the
                batcher and the Python predictor (`torchexp.predictor`) share
    pipeline    one request's instances through the project's hooks and a predictor
    predictors  what runs a batch: the release's torch model, or its ONNX export
    metrics     Prometheus metrics on the server's own registry
    threads     how many threads inference may use
"""
