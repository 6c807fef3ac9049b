"""Requests per second and latency of `serve` under `hey`, against the model's own ceiling
and a plain FastAPI endpoint, side by side.

For each runtime (torch; onnx: the release's ONNX export in onnxruntime; aoti: its
torch.export + AOTInductor package, compiled at export), on a release
of the fast preset (configs/fast.json: its model, one short epoch; the arithmetic, and so
the speed, does not depend on the weights' values), three columns:

    ceiling     the model alone, in a process of its own with every usable core (its best;
                serve leaves torch one core less, for its event loop):
                images/s at batch 1 and at batch --max-batch (32, serve's default
                --max-batch-size), a batch of real MNIST test digits run back to back
    plain       a FastAPI app with a synchronous `def` endpoint running the model on each
                request, batch 1: how the Optuna MNIST project and most FastAPI scripts
                serve a model (written below, uvicorn, one process)
    serve       `serve --runtime RUNTIME` (and with --workers 2 for torch), as a user runs it

and, once per round, whatever the runtime:

    floor       uvicorn (one process, as serve runs it) answering every request with a
                constant prediction, having read its body and nothing else: the most any
                one-process Python server answers on this machine, with hey beside it

Load comes from `hey` (Debian's package: a compiled load generator, `make hey` installs
it), on the loopback address only: 1 and 32 clients, each sending single-image requests
({"instances": [28 x 28]}, one real MNIST test digit, 0-255) back to back for --duration
seconds after --warmup unmeasured seconds. Every server runs alone, one after the other;
hey shares the machine's cores with it, as a client on the same host would.

The summary gives, per runtime: serve's requests/s at 32 clients over the ceiling's
images/s at the batch serve forms (goal at least 0.5) and its p99 (goal at most 50 ms),
and serve's requests/s at 1 client over plain's (goal at least 1); beside them, the requests/s
the goal asks for against the floor's, and serve's share of the floor. When onnx and aoti
are both measured, it also gives aoti's requests/s at 32 clients over onnx's (goal at least
1: a compiled package runs a batch without returning to the interpreter, as onnxruntime
does). Every line is JSON; the first and the summary carry the machine's CPU flags.

    .venv/bin/python benchmarks/serve.py [--duration 10] [--runtimes torch,onnx,aoti] [--rounds 1]
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # after the path set-up above

NAME = "served"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GOAL_CEILING_RATIO, GOAL_P99_MS, GOAL_CLIENTS, GOAL_LONE_RATIO, GOAL_AOTI_ONNX_RATIO = 0.5, 50.0, 32, 1.0, 1.0
EXPORTED_RUNTIMES = ("onnx", "aoti")  # the runtimes that run an export, written before the servers start


def prepare_release(experiments: str, args: argparse.Namespace) -> None:
    """Create the experiment with `init`, train one short epoch, release it, and export it
    for each runtime measured that runs an export; print how long each export took."""
    import torch
    from torchexp import loop

    from mnist_classifier.runner import MNISTClassifierRunner
    from torchexp.releases import create_release

    common.create_experiment(experiments, NAME, args.data_path, common.PRESETS["fast"], args.seed)
    runner = common.make_runner(experiments, NAME, args.data_path, MNISTClassifierRunner, common.subset_data_class(args.train_samples))
    try:
        loop.train(runner, torch.device("cpu"), 1, log_period=1000)
    finally:
        common.close_runner(runner)
    create_release(runner.experiment, 1, runner.experiment.read_definition())
    for runtime in (runtime for runtime in EXPORTED_RUNTIMES if runtime in args.runtimes):
        arguments = ("export", "--format", runtime, "--check-samples", "200")
        seconds, _ = common.time_process(common.cli_command(experiments, NAME, args.data_path, *arguments))
        common.emit({"benchmark": "serve", "export": runtime, "seconds": round(seconds, 1)})


def write_body(path: str, data_path: str) -> None:
    """The request body: one real MNIST test digit, as MNIST's 0-255 pixel values."""
    from mnist_classifier.data import read_mnist

    images, _ = read_mnist(data_path, train=False)
    with open(path, "w", encoding="utf-8") as file:
        json.dump({"instances": [images[0].tolist()]}, file)


def measure_ceiling(experiments: str, runtime: str, args: argparse.Namespace) -> dict:
    """The model's own images/s at batch 1 and at --max-batch, in a process of its own."""
    command = [sys.executable, os.path.abspath(__file__), "--ceiling", experiments, "--runtime", runtime, "--max-batch", str(args.max_batch),
               "--data-path", args.data_path, "--duration", str(args.ceiling_seconds)]
    _, output = common.time_process(command)
    return json.loads(output.strip().splitlines()[-1])


def server_command(variant: str, experiments: str, runtime: str, args: argparse.Namespace) -> list[str]:
    if variant == "floor":
        return [sys.executable, os.path.abspath(__file__), "--floor-server"]
    if variant == "plain":
        return [sys.executable, os.path.abspath(__file__), "--plain-server", experiments, "--runtime", runtime]
    extra = ["--runtime", runtime, "--device", "cpu", "--port", "0"] + args.serve_options.split()
    if variant == "serve_workers":
        extra += ["--workers", str(args.workers)]
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
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_hey(url: str, body: str, clients: int, seconds: float) -> dict:
    """Run hey against the predict path for `seconds`; return requests/s, p50, p99 and errors.

    Raises:
        SystemExit: the URL is not on the loopback address.
    """
    from urllib.parse import urlsplit

    if urlsplit(url).hostname not in LOOPBACK:
        raise SystemExit(f"load is only sent to the loopback address, not {urlsplit(url).hostname}")
    command = ["hey", "-z", f"{seconds}s", "-c", str(clients), "-m", "POST", "-T", "application/json", "-D", body,
               f"{url}v1/models/{NAME}:predict"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return read_hey(output)


def read_hey(output: str) -> dict:
    """The figures of hey's text summary."""
    statuses = {code: int(count) for code, count in re.findall(r"\[(\d+)\]\s+(\d+) responses", output)}
    errors = {code: count for code, count in statuses.items() if code != "200"}
    errors.update({"connection": int(count) for count in re.findall(r"\[(\d+)\]\s+(?:Post|Get|dial)", output)})
    return {
        "requests_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)), 1),
        "p50_ms": read_percentile_ms(output, 50),
        "p99_ms": read_percentile_ms(output, 99),
        "responses": sum(statuses.values()),
        "errors": errors,
    }


def read_percentile_ms(output: str, percent: int) -> float | None:
    """A latency percentile of hey's summary in ms, or None where hey printed none (too few
    responses)."""
    found = re.search(rf"{percent}%+ in ([\d.]+) secs", output)
    return round(1000 * float(found.group(1)), 2) if found else None


def measure_round(round_index: int, experiments: str, body: str, args: argparse.Namespace, results: dict) -> None:
    """Measure what --variants names, the runtimes (and their servers) in this round's order:
    every other round goes backwards, so that no server always follows the same one."""
    if "floor" in args.variants:
        measure_server(round_index, "http", "floor", experiments, body, args, results)
    for runtime in args.runtimes if round_index % 2 == 0 else reversed(args.runtimes):
        if "ceiling" in args.variants:
            ceiling = measure_ceiling(experiments, runtime, args)
            results.setdefault((runtime, "ceiling"), []).append(ceiling)
            common.emit({"benchmark": "serve", "round": round_index, "runtime": runtime, "variant": "ceiling", **ceiling})
        variants = [variant for variant in ("plain", "serve") if variant in args.variants]
        variants += ["serve_workers"] if "serve" in args.variants and runtime == "torch" and args.workers > 1 else []
        for variant in variants if round_index % 2 == 0 else reversed(variants):
            measure_server(round_index, runtime, variant, experiments, body, args, results)


def measure_server(round_index: int, runtime: str, variant: str, experiments: str, body: str, args: argparse.Namespace, results: dict) -> None:
    """Start one server, load it with hey at each client count, and stop it."""
    process, url = start_server(server_command(variant, experiments, runtime, args))
    try:
        for clients in args.concurrency:
            run_hey(url, body, clients, args.warmup)
            figures = run_hey(url, body, clients, args.duration)
            results.setdefault((runtime, f"{variant}@{clients}"), []).append(figures)
            common.emit({"benchmark": "serve", "round": round_index, "runtime": runtime, "variant": variant, "clients": clients, **figures})
    finally:
        stop_server(process)


def median_of(runs: list[dict], key: str) -> float | None:
    """The median of a figure over rounds, those without it (a missing percentile) left out."""
    values = [run[key] for run in runs if run[key] is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(results: dict, args: argparse.Namespace) -> dict:
    """Medians over rounds, the ratios the goals are stated in, and whether each is met."""
    medians = {
        f"{runtime}/{column}": {key: median_of(runs, key) for key in runs[0] if key != "errors"}
        for (runtime, column), runs in results.items()
    }
    summary = {}
    floor = medians.get(f"http/floor@{GOAL_CLIENTS}", {}).get("requests_per_s")
    for runtime in args.runtimes:
        ceiling = medians.get(f"{runtime}/ceiling", {}).get(f"batch_{args.max_batch}_images_per_s")
        for variant in ("serve", "serve_workers"):
            busy, lone = medians.get(f"{runtime}/{variant}@{GOAL_CLIENTS}"), medians.get(f"{runtime}/{variant}@1")
            plain = medians.get(f"{runtime}/plain@1")
            if busy is None or lone is None or plain is None or ceiling is None:
                continue
            goal = round(GOAL_CEILING_RATIO * ceiling, 1)
            ratio_ceiling = round(busy["requests_per_s"] / ceiling, 3)
            ratio_plain = round(lone["requests_per_s"] / plain["requests_per_s"], 3)
            summary[f"{runtime}/{variant}"] = {
                f"@{GOAL_CLIENTS} requests/s / ceiling images/s at batch {args.max_batch}": ratio_ceiling,
                f"@{GOAL_CLIENTS} p99 ms": busy["p99_ms"],
                "@1 requests/s / plain's": ratio_plain,
                f"@{GOAL_CLIENTS} requests/s the goal asks for": goal,
                f"@{GOAL_CLIENTS} floor's requests/s": floor,
                f"@{GOAL_CLIENTS} requests/s / floor's": round(busy["requests_per_s"] / floor, 3) if floor else None,
                "goal within the floor": goal <= floor if floor else None,
                "goals met": {
                    f">= {GOAL_CEILING_RATIO} of the ceiling": ratio_ceiling >= GOAL_CEILING_RATIO,
                    f"p99 <= {GOAL_P99_MS} ms": busy["p99_ms"] is not None and busy["p99_ms"] <= GOAL_P99_MS,
                    ">= plain at 1 client": ratio_plain >= GOAL_LONE_RATIO,
                },
            }
    busy = {name: medians.get(f"{name}/serve@{GOAL_CLIENTS}", {}).get("requests_per_s") for name in EXPORTED_RUNTIMES}
    if all(busy.values()):
        ratio = round(busy["aoti"] / busy["onnx"], 3)
        summary["aoti/serve against onnx/serve"] = {
            f"@{GOAL_CLIENTS} requests/s / onnx's": ratio,
            f">= {GOAL_AOTI_ONNX_RATIO} (goal met)": ratio >= GOAL_AOTI_ONNX_RATIO,
        }
    return {"benchmark": "serve", "summary": True, "machine": common.machine(), "medians": medians, "goals": summary}


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="measured seconds per level (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured seconds of load before each level (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over the servers, alternating their order (default: %(default)s)")
    parser.add_argument("--concurrency", default="1,32", help="client counts (default: %(default)s)")
    parser.add_argument("--runtimes", default="torch,onnx,aoti", help="runtimes served (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="serve --workers of the extra torch variant; 1 leaves it out (default: %(default)s)")
    parser.add_argument("--max-batch", type=int, default=32, help="the ceiling's large batch: serve's --max-batch-size (default: %(default)s)")
    parser.add_argument("--ceiling-seconds", type=float, default=3, help="seconds per batch size of the ceiling (default: %(default)s)")
    parser.add_argument("--train-samples", type=int, default=2048, help="images of the release's one training epoch (default: %(default)s)")
    parser.add_argument("--variants", default="ceiling,floor,plain,serve",
                        help="what to measure: ceiling, floor, plain, serve (default: %(default)s)")
    parser.add_argument("--serve-options", default="", help="extra options of serve, e.g. '--max-delay-ms 2 --threads 1'")
    args = parser.parse_args()
    args.concurrency = [int(value) for value in args.concurrency.split(",")]
    args.runtimes = args.runtimes.split(",")
    args.variants = args.variants.split(",")
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed: `make hey` installs Debian's package (as root), or see https://github.com/rakyll/hey")
    common.emit({"benchmark": "serve", "machine": common.machine(), "duration_s": args.duration, "rounds": args.rounds,
                 "serve_options": args.serve_options})
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="torchexp-serve-") as folder:
        prepare_release(folder, args)
        body = os.path.join(folder, "body.json")
        write_body(body, args.data_path)
        for round_index in range(args.rounds):
            measure_round(round_index, folder, body, args, results)
    common.emit(summarize(results, args))


# The model alone ---------------------------------------------------------------------------


def load_model(experiments: str, runtime: str, threads: int):
    """A function running the release's model on a float32 batch, as serve's predictors do."""
    import torch

    from torchexp.folder import Experiment
    from torchexp.inference import load_inference_runner

    experiment = Experiment(experiments, NAME)
    if runtime == "onnx":
        from torchexp.export import export_path, open_onnx_session
        from torchexp.releases import find_release

        session = open_onnx_session(export_path(experiment, find_release(experiment, None).epoch, "onnx"), threads)
        return lambda batch: session.run(["output"], {"input": batch.numpy()})[0]
    if runtime == "aoti":
        from torchexp.export import export_path
        from torchexp.formats import FORMATS
        from torchexp.releases import find_release

        path = export_path(experiment, find_release(experiment, None).epoch, "aoti")
        return FORMATS["aoti"].load_predictor(path, None, torch.device("cpu"), threads).predict
    model = load_inference_runner(experiment, "release", "cpu").model

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return run


def run_ceiling(experiments: str, runtime: str, max_batch: int, data_path: str, seconds: float) -> None:
    """Print the model's images/s at batch 1 and `max_batch`, with every usable core."""
    from mnist_classifier.data import read_mnist, normalize
    from torchexp.cores import count_usable_cores
    from torchexp.serving.threads import apply_threads

    threads = count_usable_cores()
    apply_threads(threads)
    predict = load_model(experiments, runtime, threads)
    images, _ = read_mnist(data_path, train=False)
    figures = {"threads": threads}
    for size in (1, max_batch):
        batch, _ = normalize((images[:size], None))
        for _ in range(20):
            predict(batch)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            predict(batch)
            count += 1
        figures[f"batch_{size}_images_per_s"] = round(count * size / (time.perf_counter() - started), 1)
    print(json.dumps(figures), flush=True)


# The floor and plain servers' process -----------------------------------------------------


def run_on_loopback(app, name: str, **config) -> None:
    """Run `app` in uvicorn, one process, on a free loopback port, after printing the first
    line start_server reads its URL from."""
    import uvicorn

    from torchexp.serving.server import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    print(f"{name} server at http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config)).run(sockets=[sock])


# The floor ---------------------------------------------------------------------------------

# A prediction of serve's shape and size for one MNIST digit.
FLOOR_ANSWER = b'{"predictions":[{"label":7,"probabilities":[' + b",".join([b"1.2345678901234567e-05"] * 10) + b"]}]}"


async def answer_constant(scope: dict, receive, send) -> None:
    """Read the request's body, then answer FLOOR_ANSWER: the least a server does."""
    more_body = True
    while more_body:
        more_body = (await receive()).get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(FLOOR_ANSWER))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": FLOOR_ANSWER})


# The plain server ------------------------------------------------------------------------


def make_plain_app(experiments: str, runtime: str):
    import torch
    from fastapi import Body, FastAPI

    from mnist_classifier.data import MEAN, STD

    predict_batch = load_model(experiments, runtime, torch.get_num_threads())
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict:
        return {"ready": True}

    @app.post(f"/v1/models/{NAME}:predict")
    def predict(body: dict = Body(...)) -> dict:
        # A synchronous def: FastAPI runs it in its thread pool, one request at a time per thread.
        pixels = torch.tensor(body["instances"][0], dtype=torch.float32)
        output = torch.as_tensor(predict_batch(pixels.div(255).sub(MEAN).div(STD).view(1, 1, 28, 28)))
        probabilities = torch.softmax(output[0], dim=0)
        return {"predictions": [{"label": int(probabilities.argmax()), "probabilities": probabilities.tolist()}]}

    return app


def dispatch() -> None:
    """The same file is the benchmark, the model alone, the floor and the plain server."""
    if "--floor-server" in sys.argv:
        run_on_loopback(answer_constant, "floor", lifespan="off")  # a bare ASGI function has no lifespan
    elif "--plain-server" in sys.argv or "--ceiling" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--plain-server")
        parser.add_argument("--ceiling")
        parser.add_argument("--runtime", required=True)
        parser.add_argument("--max-batch", type=int, default=32)
        parser.add_argument("--data-path")
        parser.add_argument("--duration", type=float, default=3)
        args = parser.parse_args()
        if args.plain_server:
            run_on_loopback(make_plain_app(args.plain_server, args.runtime), "plain")
        else:
            run_ceiling(args.ceiling, args.runtime, args.max_batch, args.data_path, args.duration)
    else:
        main()


if __name__ == "__main__":
    dispatch()
