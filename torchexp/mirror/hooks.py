"""What `create_release` asks MLflow before it writes a release: the registered model's name.

Every other event reaches the mirror through its tracker (`torchexp.mirror.tracker`).
"""

from torchexp.errors import ConfigError
from torchexp.folder import Experiment
from torchexp.mirror.target import MlflowTarget


def check_registered_model(
    target: MlflowTarget | None, experiment: Experiment, epoch: int, asked: str | None
) -> str | None:
    """Before a release is written: the registered model it goes to, which MLflow has
    accepted (and created when new); None when tracking is off.

    Raises:
        ConfigError: a name is asked for with tracking off.
        TrackingError: MLflow cannot be reached, or refuses the name.
    """
    if target is None:
        if asked is not None:
            raise ConfigError("--registered-model needs MLflow tracking: pass --mlflow-uri or set MLFLOW_TRACKING_URI")
        return None
    from torchexp.mirror.registry import choose_model_name, ensure_registered_model
    from torchexp.mirror.runs import connect

    name = choose_model_name(experiment, epoch, asked)
    ensure_registered_model(connect(target), target, name)
    return name
