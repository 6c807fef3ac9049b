"""Serving a release over HTTP: the `serve` command's library.

Modules, from the request inward:
    launcher        checks the release, binds the port, serves in this process or in workers
    server          one serving process: loads the release, runs uvicorn, stops gracefully
    workers         --workers N: N server processes on the one port
    protocol        the FastAPI app: KServe V1 routes, health, metrics, GET /
    open_inference  the Open Inference Protocol (KServe V2) routes, beside V1's
    tensors         V2 tensors: input rows into instances, predictions into output tensors
    page            what GET / answers: liveness to API clients, the project's page to browsers
    batcher         dynamic batching on one worker thread, off the event loop
    answers         requests' instances through the pipeline to their JSON answers: the path the
                    batcher and the Python predictor (`torchexp.predictor`) share
    pipeline        one request's instances through the project's hooks and a predictor
    schemas         the project's declared instance (pydantic or JSON Schema), checked first
    predictors      what runs a batch: the release's torch model, or an export in its
                    format's runtime (torchexp.formats)
    metrics         Prometheus metrics on the server's own registry
    threads         how many threads inference may use
"""
