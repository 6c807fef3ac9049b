"""Testing an experiment, as `test` does: the weights of an epoch on the test set."""

from torchexp.folder import Experiment
from torchexp.project import Project
from torchexp.releases import find_weights
from torchexp.tracking import close_logger


def evaluate_experiment(project: Project, experiment: Experiment, epoch: int | None, release: bool, device: str, num_workers: int) -> dict:
    """Test the weights of `epoch` (default: the latest) on the test set; return the results."""
    from torchexp.devices import resolve_device

    epoch = epoch or find_weights(experiment, "release" if release else None).epoch
    torch_device = resolve_device(device)
    runner = project.make_runner(experiment, experiment.read_definition(), num_workers)
    try:
        return runner.run_test(torch_device, epoch, release)
    finally:
        runner.tracker.close()
        close_logger(runner.logger)
