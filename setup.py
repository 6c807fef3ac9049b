import re

from setuptools import find_packages, setup

# The version is written once, in torchexp/version.py; read without importing torchexp.
with open("torchexp/version.py", encoding="utf-8") as file:
    VERSION = re.search(r'__version__ = "([^"]+)"', file.read()).group(1)

# The services' libraries are bounded: from the release line we test (the lower bound, what
# the tests ran with), below the next major, whose breaking changes we have not met yet (for
# a 0.x library, below 1.0). torchexp subclasses or calls beyond the basics each of them:
# Optuna's samplers and journal backend, FastAPI's and Starlette's app and TestClient,
# pydantic's models, ONNX's export and runtime sessions, MLflow's client and model flavor,
# W&B's run API, torchdata's StatefulDataLoader state. Widen a bound once the tests pass.
EXTRAS = {
    "search": [
        "optuna>=5.1,<6",  # TPESampler and GridSampler subclassed, JournalFileBackend, RDBStorage
        "optuna-dashboard>=0.21,<1",  # search --dashboard
        "scipy>=1.17,<2",  # the Sobol sequence of the search's first trials
        "sqlalchemy>=2.0,<3",  # a database storage's errors (sqlalchemy.exc), under Optuna's RDBStorage
        "psycopg2-binary>=2.9,<3",  # search --storage postgresql://...
    ],
    "serve": [
        "fastapi>=0.165,<1",
        "starlette>=1.10,<2",  # HTTPException, and the TestClient of a project's tests
        "pydantic>=2.14,<3",  # declared instance schemas (Runner.serve_schema), the V2 protocol's bodies
        "uvicorn[standard]>=0.55,<1",  # httptools and uvloop parse and loop in C
        "orjson>=3.13,<4",  # reads predict bodies several times faster than the json module
        "prometheus-client>=0.26,<1",  # /metrics
        "pillow>=13,<14",  # PNG instances of the MNIST classifier
    ],
    "export": [
        "onnx>=1.23,<2",
        "onnxscript>=0.7,<1",  # torch.onnx.export(dynamo=True) builds the ONNX graph with it
        "onnxruntime>=1.32,<2",  # export's check, serve --runtime onnx
        "safetensors>=0.8,<1",
    ],
    "loaders": ["torchdata>=0.11,<1"],  # StatefulDataLoader: a stream's position kept in checkpoints
    "plots": ["matplotlib>=3.11,<4"],  # compare --plot, the confusion matrix image
    "mlflow": ["mlflow>=3.17,<4"],  # --mlflow-uri / MLFLOW_TRACKING_URI: runs, the model registry, sync
    "wandb": ["wandb>=0.31,<1"],  # --tracker wandb: Weights & Biases runs (online, or offline for wandb sync)
    "docs": ["mkdocs-material", "mkdocstrings[python]"],
}
EXTRAS["benchmarks"] = ["lightning"]  # benchmarks/image_folder.py times Lightning's Trainer beside torchexp
EXTRAS["all"] = sorted({package for extra in ("search", "serve", "export", "loaders", "plots", "mlflow", "wandb") for package in EXTRAS[extra]})
# tritonclient[http]: Triton's own client of the Open Inference Protocol, against `serve`'s V2 routes.
# httpx2: what Starlette's TestClient runs on from 1.10 (on httpx it warns, deprecated); the
# tests' own HTTP clients still use httpx.
EXTRAS["test"] = [
    "pytest", "pytest-xdist", "hypothesis", "httpx", "httpx2>=2.17,<3", "selenium", "schemathesis", "scikit-learn",
    "tritonclient[http]",
    "ruff", "mypy",  # make lint, which make test runs first
]

setup(
    name="torchexp",
    version=VERSION,
    description="Experiments for PyTorch: validated configs, exact-resume checkpoints, releases, TensorBoard",
    packages=find_packages(include=["torchexp", "torchexp.*", "mnist_classifier", "mnist_classifier.*"]),
    package_data={
        "torchexp": ["templates/project/*.tmpl", "templates/project/*/*.tmpl"],  # torchexp create's templates
        "mnist_classifier": ["page/*"],  # the drawing page its Runner's serve_page names
    },
    python_requires=">=3.10",
    # What training needs; every service is an extra (torchexp/extras.py names what each brings).
    # filelock: the locks of experiments and searches on Linux, macOS and Windows; 4.3 closes a
    # forked child's copies of held locks (torchexp.locks), which the bound keeps.
    install_requires=[
        "torch", "torchvision", "tensorboard", "jsonschema>=4.18", "click>=8.1", "tqdm", "numpy", "filelock>=4.3,<5"
    ],
    extras_require=EXTRAS,
    entry_points={
        # Trackers other packages may add beside these (torchexp.trackers.plugins).
        "torchexp.trackers": [
            "mlflow=torchexp.mirror.tracker:MlflowTracker",
            "wandb=torchexp.trackers.wandb_run:WandbTracker",
        ],
        "console_scripts": [
            "torchexp=torchexp.cli:main",
            "mnist-classifier=mnist_classifier.__main__:main",
        ]
    },
)
