"""Requests per second and latency of `serve`, against a plain FastAPI endpoint, side by side.

Three servers run the same release (the default config's CNN), one after the other, each
in its own process on a free loopback port:

    plain        a FastAPI app with a synchronous `def` endpoint running the model on each
                 request, batch 1, torch's default threads: how the Optuna MNIST project
                 serves its model (written below, uvicorn, one process)
    serve_torch  `serve` (dynamic batching, torch)
    serve_onnx   `serve --runtime onnx` (dynamic batching, onnxruntime)

A separate load-generator process (asyncio, HTTP/1.1 keep-alive, loopback only) keeps 1, 8
and 32 clients each sending single-image requests ({"instances": [28 x 28]}, real MNIST
test digits) back to back, for a bounded time and count per level after a warm-up. Each
level prints requests/s, p50 and p99 latency and errors; the summary gives the ratios
against `plain` at each level and checks the goal: at 32 clients, serve at least 3x
plain's requests/s with p99 <= 50 ms. The load generator shares the machine's cores with
the server, as a client on the same host would.

The release's weights come from one epoch on the first --train-samples images: the
arithmetic, and so the speed, does not depend on the weights' values (dense fp32 kernels).

    .venv/bin/python benchmarks/serve.py [--duration 10] [--rounds 1] [--concurrency 1,8,32]
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

NAME = "served"
VARIANTS = ("plain", "serve_torch", "serve_onnx")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GOAL_RATIO, GOAL_P99_MS, GOAL_CLIENTS = 3.0, 50.0, 32


def prepare_release(experiments: str, args: argparse.Namespace) -> None:
    """Create the experiment with `init`, train one short epoch, release it, export ONNX."""
    import torch
    from torchexp import loop

    from mnist_classifier.runner import MNISTClassifierRunner
    from torchexp.releases import create_release

    common.create_experiment(experiments, NAME, args.data_path, common.DEFAULT_CONFIG, args.seed)
    runner = common.make_runner(experiments, NAME, args.data_path, MNISTClassifierRunner, common.subset_data_class(args.train_samples))
    try:
        loop.train(runner, torch.device("cpu"), max_epochs=1, log_period=1000)
    finally:
        common.close_runner(runner)
    create_release(runner.experiment, 1, runner.experiment.read_definition())
    common.time_process(common.cli_command(experiments, NAME, args.data_path, "export", "--format", "onnx", "--check-samples", "200"))


def write_bodies(path: str, data_path: str, count: int = 256) -> None:
    """The request bodies: one real MNIST test digit each, as MNIST's 0-255 pixel values."""
    from mnist_classifier.data import read_mnist

    images, _ = read_mnist(data_path, train=False)
    with open(path, "w", encoding="utf-8") as file:
        json.dump([json.dumps({"instances": [image.tolist()]}) for image in images[:count]], file)


def server_command(variant: str, experiments: str, args: argparse.Namespace) -> list[str]:
    if variant == "plain":
        return [sys.executable, os.path.abspath(__file__), "--plain-server", experiments]
    runtime = variant.removeprefix("serve_")
    extra = ["--runtime", runtime, "--device", "cpu", "--port", "0"] + args.serve_options.split()
    return common.cli_command(experiments, NAME, args.data_path, "serve", *extra)


def start_server(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start a server process and return it with its URL, read from its first line."""
    process = subprocess.Popen(command, cwd=common.REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if " at http://" not in line:
        process.kill()
        raise RuntimeError(f"{' '.join(command)} did not start: {line!r}")
    url = line.split(" at ")[1].split()[0]
    wait_until_ready(url)
    return process, url


def wait_until_ready(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready after {timeout} s")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_load(url: str, bodies: str, clients: int, args: argparse.Namespace) -> dict:
    """Run the load generator in its own process; return its figures."""
    command = [
        sys.executable, os.path.abspath(__file__), "--load", url, "--bodies", bodies, "--clients", str(clients),
        "--duration", str(args.duration), "--warmup", str(args.warmup), "--max-requests", str(args.max_requests),
    ]
    _, output = common.time_process(command)
    return json.loads(output.strip().splitlines()[-1])


def measure_round(round_index: int, experiments: str, bodies: str, args: argparse.Namespace, results: dict) -> None:
    order = VARIANTS if round_index % 2 == 0 else tuple(reversed(VARIANTS))
    for variant in order:
        process, url = start_server(server_command(variant, experiments, args))
        try:
            for clients in args.concurrency:
                figures = run_load(url, bodies, clients, args)
                results.setdefault((variant, clients), []).append(figures)
                common.emit({"benchmark": "serve", "round": round_index, "variant": variant, "clients": clients, **figures})
        finally:
            stop_server(process)


def summarize(results: dict, args: argparse.Namespace) -> dict:
    """Medians over rounds, ratios against plain at each level, and the goal at 32 clients."""
    medians = {
        f"{variant}@{clients}": {key: statistics.median(run[key] for run in runs) for key in ("requests_per_s", "p50_ms", "p99_ms")}
        for (variant, clients), runs in results.items()
    }
    ratios = {
        f"{variant}@{clients}": round(medians[f"{variant}@{clients}"]["requests_per_s"] / medians[f"plain@{clients}"]["requests_per_s"], 2)
        for variant, clients in results
        if variant != "plain"
    }
    goals = {}
    if GOAL_CLIENTS in args.concurrency:
        for variant in VARIANTS[1:]:
            key = f"{variant}@{GOAL_CLIENTS}"
            goals[variant] = {
                f">= {GOAL_RATIO}x plain requests/s": ratios[key] >= GOAL_RATIO,
                f"p99 <= {GOAL_P99_MS} ms": medians[key]["p99_ms"] <= GOAL_P99_MS,
            }
    return {"benchmark": "serve", "summary": True, "medians": medians, "ratio_vs_plain": ratios, "goals": goals}


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per level (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds before each level (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the three servers, alternating their order (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,8,32", help="client counts (default: %(default)s)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="most requests per level (default: %(default)s)")
    parser.add_argument("--train-samples", type=int, default=2048, help="images of the release's one training epoch (default: %(default)s)")
    parser.add_argument("--serve-options", default="", help="extra options of serve, e.g. '--max-delay-ms 2 --threads 1'")
    args = parser.parse_args()
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    common.emit({"benchmark": "serve", "machine": common.machine(), "duration_s": args.duration, "rounds": args.rounds,
                 "serve_options": args.serve_options})
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="torchexp-serve-") as folder:
        prepare_release(folder, args)
        bodies = os.path.join(folder, "bodies.json")
        write_bodies(bodies, args.data_path)
        for round_index in range(args.rounds):
            measure_round(round_index, folder, bodies, args, results)
    common.emit(summarize(results, args))


# The plain server ------------------------------------------------------------------------


def run_plain_server(experiments: str) -> None:
    """Serve the release the way a plain FastAPI project does, on a free loopback port."""
    import uvicorn

    from torchexp.serving.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    print(f"plain server at http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    uvicorn.Server(uvicorn.Config(make_plain_app(experiments), log_level="warning", access_log=False)).run(sockets=[sock])


def make_plain_app(experiments: str):
    import torch
    from fastapi import Body, FastAPI

    from mnist_classifier.data import MEAN, STD
    from torchexp.folder import Experiment
    from torchexp.inference import load_inference_runner

    model = load_inference_runner(Experiment(experiments, NAME), "release", "cpu").model
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post(f"/v1/models/{NAME}:predict")
    def predict(body: dict = Body(...)) -> dict:
        # A synchronous def: FastAPI runs it in its thread pool, one request at a time per thread.
        pixels = torch.tensor(body["instances"][0], dtype=torch.float32)
        with torch.no_grad():
            probabilities = model(pixels.div(255).sub(MEAN).div(STD).view(1, 1, 28, 28)).exp()[0]
        return {"predictions": [{"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}]}

    return app


# The load generator ----------------------------------------------------------------------


def run_load_generator(url: str, bodies_path: str, clients: int, duration: float, warmup: float, max_requests: int) -> None:
    """Keep `clients` connections busy with requests; print one JSON line of figures."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        raise SystemExit(f"the load generator only sends to the loopback address, not {parts.hostname}")
    with open(bodies_path, encoding="utf-8") as file:
        bodies = [body.encode() for body in json.load(file)]
    path = f"/v1/models/{NAME}:predict"
    figures = asyncio.run(generate_load(parts.hostname, parts.port, path, bodies, clients, duration, warmup, max_requests))
    print(json.dumps(figures), flush=True)


async def generate_load(host: str, port: int, path: str, bodies: list[bytes], clients: int, duration: float, warmup: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter() + warmup
    deadline = start + duration
    requests = [
        b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), host.encode(), port, len(body), body)
        for body in bodies
    ]

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        sent = index
        while time.perf_counter() < deadline and len(latencies) < max_requests:
            began = time.perf_counter()
            writer.write(requests[sent % len(requests)])
            sent += 1
            status, close = await read_response(reader)
            if began >= start:
                latencies.append(time.perf_counter() - began)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        writer.close()

    await asyncio.gather(*(client(index) for index in range(clients)))
    measured = min(duration, max(time.perf_counter() - start, 1e-9))
    latencies.sort()
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / measured, 1),
        "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
        "errors": errors,
    }


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return its status and whether the server closes the connection."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), b"connection: close" in head


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile of sorted values (nearest rank)."""
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def dispatch() -> None:
    """The same file is the benchmark, the plain server and the load generator."""
    if "--plain-server" in sys.argv:
        run_plain_server(sys.argv[sys.argv.index("--plain-server") + 1])
    elif "--load" in sys.argv:
        parser = argparse.ArgumentParser()
        for option, kind in (("--load", str), ("--bodies", str), ("--clients", int), ("--duration", float), ("--warmup", float), ("--max-requests", int)):
            parser.add_argument(option, type=kind, required=True)
        args = parser.parse_args()
        run_load_generator(args.load, args.bodies, args.clients, args.duration, args.warmup, args.max_requests)
    else:
        main()


if __name__ == "__main__":
    dispatch()
