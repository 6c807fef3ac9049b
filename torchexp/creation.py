"""Creating an experiment, as `init` does: the project's `Data.create`, then the folder.

A search creates its trials here too, so that a trial is an experiment like any other.
"""

from torchexp.config import Config
from torchexp.folder import Experiment
from torchexp.hooks import project_errors
from torchexp.logs import close_logger, make_logger
from torchexp.project import (
    Project,
    check_data_path,
    check_json_data,
    find_project_root,
    import_project_class,
    record_versions,
)
from torchexp.provenance import append_record, collect, watching_reads


def init_experiment(project: Project, experiment: Experiment, conf: dict, seed: int, extra: dict | None = None) -> None:
    """Create `experiment` from a validated configuration: run the project's `Data.create`
    and write the folder, all or nothing.

    Args:
        project: the project's classes, data path and verbosity.
        experiment: the experiment to create; its name must be free.
        conf: a configuration from `torchexp.config.build_config`.
        seed: the seed of every random generator.
        extra: more JSON data for config.json beside "seed", "versions", "classes" and
            "config" (a search keeps its trial there).
    """
    definition = {
        "seed": seed,
        "versions": record_versions(),
        "classes": project.classes(),
        "project_root": find_project_root(project.runner_class),
        "config": conf,
        **(extra or {}),
    }
    check_json_data(definition, "the experiment's definition")
    logger = make_logger(experiment.name, None, project.verbosity)
    try:
        check_data_path(project.data_path)
        with project_errors(), watching_reads() as reads:
            data = import_project_class(project.data_class)(Config(conf), seed, logger)
            state = data.create(project.data_path)
            files = data.data_files(project.data_path) or reads
        check_json_data(state, "Data.create")
        experiment.create(definition, state)
    finally:
        close_logger(logger)
    append_record(experiment.provenance_path, "init", collect(definition, files, project.data_path))
    logger = make_logger(experiment.name, experiment.log_path, project.verbosity)
    logger.info(f"created experiment {experiment.name!r} in {experiment.path} (seed {seed})")
    close_logger(logger)
