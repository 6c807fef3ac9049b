"""TensorBoard's HParams view: each experiment's hyperparameters, in its own tensorboard/ folder.

The HParams plugin's three summaries (experiment, session start, session end) go through
the experiment's own SummaryWriter into its tensorboard/ folder, so that no time-stamped
sub-run appears (SummaryWriter.add_hparams makes one, pytorch#32651). Each experiment is
then one session, named after it; `tensorboard --compare`, which names every
experiment's folder as a run, shows them all in one table and one parallel-coordinates
plot. Hyperparameters are the configuration flattened to dotted keys, and the seed;
metrics are the `train/`, `validation/` and `test/` scalars `Tracker` already writes, of
which the plugin shows each one's last value.

What tensorboard/plugins/hparams (backend_context.py, list_session_groups.py) does with
them decides what is written:

- The metrics must be declared in an experiment summary. Without one the plugin finds
  them itself, but for a run at the root of a log folder (ours: "." or "NAME/.") it
  looks them up in the run "NAME/./." and finds no value. Declared with an empty group,
  it reads them from the session's own run.
- The plugin uses the first experiment summary it finds, in any run, for every run: so
  every experiment declares its own, and all of a project's agree (the same keys, the
  same metric names). Hyperparameters are declared without a domain: a discrete domain
  drawn from one experiment would make the dashboard's filter hide the others.
- TensorBoard keeps the first summary of each tag in a run and ignores later ones. An
  experiment's configuration never changes, so writing again in every process is
  harmless; summaries are written only when a train or test ends without an error, so
  that a mistake changes nothing and the session first recorded is a success.
"""

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

HParamValue = bool | int | float | str

SUMMARY_STEP = 0  # below any purge step, so a resumed run's writer never hides them
METRIC_KINDS = ("validation", "test", "train")  # the dashboard shows the first five metrics


def flatten_hparams(config: dict, seed: int) -> dict[str, HParamValue]:
    """Return an experiment's hyperparameters: its configuration flattened to dotted keys
    (`training.lr`, `model.name`, `trainer.precision`...) and its seed.

    Values stay numbers, booleans and strings; lists become their JSON text and null the
    string "null", so that a value unset in one experiment and set in another shows as a
    difference.

    Args:
        config: the experiment's validated configuration.
        seed: the experiment's seed.
    """
    flat: dict[str, HParamValue] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix[:-1]] = node
        else:
            flat[prefix[:-1]] = json.dumps(node)

    visit(config, "")
    flat["seed"] = seed
    return flat


def list_metric_tags(names: dict[str, list[str]]) -> list[str]:
    """Return the scalar tags to declare as metrics, in the order the dashboard should show
    them: validation/, test/, then train/.

    Args:
        names: the metric names this process knows by kind ("train", "validation",
            "test"). A kind it does not know gets the names of the others: the summaries
            first written are the ones kept, and training writes them before any test,
            whose metrics are usually those of validation.
    """
    known = list(dict.fromkeys(name for kind in METRIC_KINDS for name in names.get(kind, ()))) or ["loss"]
    return [f"{kind}/{name}" for kind in METRIC_KINDS for name in names.get(kind) or known]


def make_hparams_summaries(
    hparams: dict[str, HParamValue], metric_tags: list[str], session: str, start_time: float
) -> list[Any]:
    """Return the HParams plugin's experiment, session start and session end summaries.

    Args:
        hparams: from `flatten_hparams`.
        metric_tags: scalar tags of the session's own run, from `list_metric_tags`.
        session: the session's name in the dashboard (the experiment's name).
        start_time: when the session began, in seconds since the epoch.

    Returns:
        tensorboard `Summary` protocol buffers, for `FileWriter.add_summary`.
    """
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    start = plugin_data_pb2.SessionStartInfo(group_name=session, start_time_secs=start_time)
    infos = []
    for name, value in hparams.items():
        # bool before numbers: isinstance(True, int) holds.
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_BOOL))
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_FLOAT64))
        else:
            start.hparams[name].string_value = value
            infos.append(api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_STRING))
    datasets = {"train": api_pb2.DATASET_TRAINING, "validation": api_pb2.DATASET_VALIDATION}
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(group="", tag=tag), dataset_type=datasets.get(tag.split("/")[0], 0))
        for tag in metric_tags
    ]
    experiment = api_pb2.Experiment(time_created_secs=start_time, hparam_infos=infos, metric_infos=metrics)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    return [
        make_summary("experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        make_summary("session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        make_summary("session_end_info", plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ]


def make_summary(kind: str, content: Any) -> Any:
    """Return a Summary holding HParams plugin data under its tag `_hparams_/<kind>`."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary_metadata = metadata.create_summary_metadata(content)
    summary_metadata.data_class = summary_pb2.DATA_CLASS_TENSOR
    summary = summary_pb2.Summary()
    summary.value.add(tag=f"_hparams_/{kind}", metadata=summary_metadata, tensor=metadata.NULL_TENSOR)
    return summary


def write_hparams(runner: Any, start_time: float | None = None, test_metrics: tuple[str, ...] = ()) -> None:
    """Write the runner's experiment as an HParams session into its tensorboard/ folder.

    Args:
        runner: a torchexp.Runner; its tracker decides whether this process writes (rank
            0 of a distributed run does, the others do not).
        start_time: when this process's session began; None for now.
        test_metrics: the names of the metrics a test reported.
    """
    if not runner.tracker.enabled:
        return
    names = {
        kind: list(dict.fromkeys(name for entry in runner.history[kind] for name in entry))
        for kind in ("train", "validation")
    }
    names["test"] = list(test_metrics)
    summaries = make_hparams_summaries(
        flatten_hparams(runner.config.data, runner.seed),
        list_metric_tags(names),
        runner.experiment.name,
        time.time() if start_time is None else start_time,
    )
    file_writer = runner.tracker.writer.file_writer
    for summary in summaries:
        file_writer.add_summary(summary, SUMMARY_STEP)


@contextlib.contextmanager
def recording_hparams(runner: Any) -> Iterator[None]:
    """Write the runner's HParams session when the block ends without an error.

    A block that fails (a mistake, an interrupt) writes nothing, so that the experiment's
    folder stays as it was and a later run records the session.
    """
    start_time = time.time()
    yield
    write_hparams(runner, start_time)
