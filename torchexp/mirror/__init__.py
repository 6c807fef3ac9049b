"""The MLflow mirror: every experiment, its epochs, tests and releases, sent to the MLflow
tracking server and model registry a team already uses.

Opt in by MLflow's own conventions (`target`): MLFLOW_TRACKING_URI or `--mlflow-uri`.
The experiment folder stays the source of truth; the mirror sends MLflow what it lacks
(`runs`, `studies`, `registry`), off the training thread while training (`background`),
and `sync` does the same for whatever was trained, tested or released while no server
could be reached. Nothing here imports mlflow at module level.
"""
