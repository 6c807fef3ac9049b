"""Two search processes share one study in a real PostgreSQL server: every trial runs
exactly once, and the study holds exactly the trials asked for.

The test starts a throwaway server: initdb and pg_ctl in a temporary folder, no TCP
(listen_addresses is empty), a Unix socket in that folder, trust authentication. initdb
refuses to run as root, so as root the server runs as the `postgres` user (or `nobody`).
Without PostgreSQL the test fails: CI must have it.
"""

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from typing import Iterator

from search_project import open_gate, search_args, start_search, wait_until, write_space
from torchexp.search.storage import connect_database

POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
SERVER_OPTIONS = {
    "listen_addresses": "''",
    "fsync": "off",  # a throwaway server: durability costs time and proves nothing here
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
TRIALS = 4


def server_user() -> dict:
    """subprocess's user options: an unprivileged user when running as root, else none."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    raise AssertionError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


def run_tool(tool: str, *args: str, folder: str, check: bool = True) -> None:
    """Run one of PostgreSQL's programs as the server's user; fail the test with its output
    if it fails and `check`."""
    path = os.path.join(POSTGRES_BIN, tool)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": folder}
    done = subprocess.run([path, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60, **server_user())
    assert done.returncode == 0 or not check, f"{tool} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A new PostgreSQL server with a database "search"; yields its SQLAlchemy URL."""
    assert os.path.isfile(os.path.join(POSTGRES_BIN, "initdb")), f"PostgreSQL 15 is not installed ({POSTGRES_BIN}/initdb is missing): apt-get install postgresql-15"
    # Under /tmp, not pytest's tmp_path: the server's user must reach it, and the socket's
    # path must stay under the 107 bytes a Unix socket's name may have.
    folder = tempfile.mkdtemp(prefix="torchexp-pg-")
    user = server_user()
    if user:
        os.chown(folder, user["user"], user["group"])
    data = os.path.join(folder, "data")
    started = False
    try:
        run_tool("initdb", "-D", data, "-A", "trust", "-U", "search", "--no-sync", "-E", "UTF8", folder=folder)
        with open(os.path.join(data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write(f"unix_socket_directories = '{folder}'\n")
            conf.writelines(f"{name} = {value}\n" for name, value in SERVER_OPTIONS.items())
        started = True
        run_tool("pg_ctl", "-D", data, "-l", os.path.join(folder, "server.log"), "-w", "-t", "60", "start", folder=folder)
        run_tool("createdb", "-h", folder, "-U", "search", "search", folder=folder)
        yield f"postgresql://search@/search?host={folder}"
    finally:
        if started:
            # Not checked: a failure to start must not be hidden by the failure to stop it.
            run_tool("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", folder=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)


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
