import re

from setuptools import find_packages, setup

# The version is written once, in torchexp/version.py; read without importing torchexp.
with open("torchexp/version.py", encoding="utf-8") as file:
    VERSION = re.search(r'__version__ = "([^"]+)"', file.read()).group(1)

EXTRAS = {
    "search": [
        "optuna",
        "optuna-dashboard",  # search --dashboard
        "scipy",  # the Sobol sequence of the search's first trials
        "psycopg2-binary",  # search --storage postgresql://...
    ],
    "serve": [
        "fastapi",
        "pydantic>=2",  # declared instance schemas (Runner.serve_schema), the V2 protocol's bodies
        "uvicorn[standard]",  # httptools and uvloop parse and loop in C
        "orjson",  # reads predict bodies several times faster than the json module
        "prometheus-client",  # /metrics
        "pillow",  # PNG instances of the MNIST classifier
    ],
    "export": [
        "onnx",
        "onnxscript",  # torch.onnx.export(dynamo=True) builds the ONNX graph with it
        "onnxruntime",  # export's check, serve --runtime onnx
        "safetensors",
    ],
    "loaders": ["torchdata"],  # StatefulDataLoader: a stream's position kept in checkpoints
    "plots": ["matplotlib"],  # compare --plot, the confusion matrix image
    "mlflow": ["mlflow"],  # --mlflow-uri / MLFLOW_TRACKING_URI: runs, the model registry, sync
    "wandb": ["wandb"],  # --tracker wandb: Weights & Biases runs (online, or offline for wandb sync)
    "docs": ["mkdocs-material", "mkdocstrings[python]"],
}
EXTRAS["benchmarks"] = ["lightning"]  # benchmarks/image_folder.py times Lightning's Trainer beside torchexp
EXTRAS["all"] = sorted({package for extra in ("search", "serve", "export", "loaders", "plots", "mlflow", "wandb") for package in EXTRAS[extra]})
# tritonclient[http]: Triton's own client of the Open Inference Protocol, against `serve`'s V2 routes.
EXTRAS["test"] = [
    "pytest", "pytest-xdist", "hypothesis", "httpx", "selenium", "schemathesis", "scikit-learn", "tritonclient[http]",
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
    install_requires=["torch", "torchvision", "tensorboard", "jsonschema>=4.18", "click>=8.1", "tqdm", "numpy"],
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
