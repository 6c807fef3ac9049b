"""Two search processes share one study in a real PostgreSQL server: every trial runs
exactly once, and the study holds exactly the trials asked for.

The test starts a throwaway server (postgres_server.py): without PostgreSQL the test
fails, CI must have it.
"""

import os
import re

from postgres_server import postgres_server
from search_project import open_gate, search_args, start_search, wait_until, write_space
from torchexp.search.storage import connect_database

TRIALS = 4


def started_trials(output: str) -> set[int]:
    """The trials a search process started, from its log lines `trial N (new): ...`."""
    return {int(number) for number in re.findall(r"trial (\d+) \(new\)", output)}


def test_two_search_processes_share_a_postgresql_study_and_run_every_trial_once(tmp_path, data_path):
    import optuna

    space = write_space(str(tmp_path), {"training.momentum": {"choice": [0.1, 0.2, 0.3, 0.4]}})
    experiments = str(tmp_path / "experiments")
    with postgres_server() as url:
        options = ("--trials", str(TRIALS), "--max-epochs", "2", "--sampler", "grid", "--pruner", "none", "--storage", url)
        gate = str(tmp_path / "gate")
        processes = [start_search(experiments, data_path, *search_args(space, *options), gate=gate) for _ in range(2)]
        try:
            # Trials wait at the gate before their second epoch: two waiting there at once
            # are one trial of each process, so both processes have found work.
            wait_until(lambda: len(os.listdir(gate)) >= 2, processes, "two trials waited at the gate")
            open_gate(gate)
            outputs = [process.communicate(timeout=120)[0] for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()  # timed out: leave no search behind
                    process.communicate()
        for process, output in zip(processes, outputs):
            assert process.returncode == 0, output
        study = optuna.load_study(study_name="study", storage=connect_database(url))
        trials = study.get_trials()
    assert [trial.number for trial in trials] == list(range(TRIALS))
    assert all(trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2] for trial in trials)
    assert sorted(trial.params["training.momentum"] for trial in trials) == [0.1, 0.2, 0.3, 0.4]
    first, second = (started_trials(output) for output in outputs)
    assert first and second, outputs
    assert not first & second and first | second == set(range(TRIALS)), outputs
    for number in range(TRIALS):
        log = (tmp_path / "experiments" / "study" / f"trial-{number:04d}" / "verbose.log").read_text()
        assert log.count("training from scratch") == 1 and "resumed from" not in log, log
    assert not os.path.exists(tmp_path / "experiments" / "study" / "journal.log")
