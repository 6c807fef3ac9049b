from setuptools import find_packages, setup

setup(
    name="torchexp",
    version="0.1.0",
    description="Experiments for PyTorch: validated configs, exact-resume checkpoints, releases, TensorBoard",
    packages=find_packages(include=["torchexp", "torchexp.*", "mnist_classifier", "mnist_classifier.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "tensorboard",
        "jsonschema>=4.18",
        "click>=8.1",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["mnist-classifier=mnist_classifier.__main__:main"]},
)
