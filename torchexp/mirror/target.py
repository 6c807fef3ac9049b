"""Where experiments are mirrored: an MLflow tracking URI, chosen by MLflow's conventions.

`--mlflow-uri`, or else MLFLOW_TRACKING_URI, turns the mirror on; without either nothing
is mirrored and mlflow is never imported. The MLflow experiment is MLFLOW_EXPERIMENT_NAME,
or else the project's name (its package, `mnist_classifier`), so that two projects' runs of
the same name stay apart; without a project, the name of the folder that holds the experiments.
"""

import dataclasses
import os
import urllib.parse
from collections.abc import Mapping

from torchexp.errors import ConfigError

# MLflow's tracking stores: its server (http, https), a local folder (file) and the
# databases of its SQL store; "postgresql+psycopg2" and the like name a driver too.
SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


@dataclasses.dataclass(frozen=True)
class MlflowTarget:
    """The tracking server (or store) to mirror to, and the MLflow experiment to use.

    Args:
        uri: the tracking URI.
        experiment_name: the MLflow experiment; None for the experiments folder's name.
    """

    uri: str
    experiment_name: str | None = None

    def experiment_for(self, experiments_path: str) -> str:
        """The MLflow experiment of the experiments (and studies) in `experiments_path`."""
        return self.experiment_name or os.path.basename(os.path.abspath(experiments_path))


def resolve_target(
    uri: str | None, environ: Mapping[str, str] = os.environ, project: str | None = None
) -> MlflowTarget | None:
    """The mirror's target from `--mlflow-uri` or MLFLOW_TRACKING_URI; None when neither is set.
    Its experiment is MLFLOW_EXPERIMENT_NAME, else `project` (the project's name), else None.

    Raises:
        ConfigError: the URI is malformed; the message names it.
    """
    uri = uri or environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return None
    check_uri(uri)
    return MlflowTarget(uri, environ.get("MLFLOW_EXPERIMENT_NAME") or project or None)


def check_uri(uri: str) -> None:
    """Refuse a tracking URI MLflow could not use, before anything is sent or written.

    Raises:
        ConfigError: an unknown scheme, a server address without a host, a bad port.
    """
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.partition("+")[0].lower()
    advice = "use http://HOST:PORT of an MLflow server, file:PATH, or a database URL such as sqlite:///PATH"
    if scheme not in SCHEMES:
        raise ConfigError(f"MLflow tracking URI {uri!r} is not valid: {advice}")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(
            f"MLflow tracking URI {uri!r} has a port that is not a number from 0 to 65535: {advice}"
        ) from None
    if scheme in ("http", "https") and not parsed.hostname:
        raise ConfigError(f"MLflow tracking URI {uri!r} names no host: {advice}")
    if port == 0:
        raise ConfigError(f"MLflow tracking URI {uri!r} has port 0: {advice}")
