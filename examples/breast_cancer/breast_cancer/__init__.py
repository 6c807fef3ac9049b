"""breast_cancer: a torchexp project. Run `python -m breast_cancer --help`."""
