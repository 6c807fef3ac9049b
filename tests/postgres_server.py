"""A throwaway PostgreSQL server for tests: initdb and pg_ctl in a temporary folder, no TCP
(listen_addresses is empty), a Unix socket in that folder, trust authentication. initdb
refuses to run as root, so as root the server runs as the `postgres` user (or `nobody`).
Without PostgreSQL a test that uses it fails: CI must have it.
"""

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Iterator

POSTGRES_BIN = "/usr/lib/postgresql/15/bin"
SERVER_OPTIONS = {
    "listen_addresses": "''",
    "fsync": "off",  # a throwaway server: durability costs time and proves nothing here
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


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
def postgres_server(database: str = "search") -> Iterator[str]:
    """A new PostgreSQL server with one empty database; yields its SQLAlchemy URL
    (postgresql://, which MLflow and optuna both accept, the driver being psycopg2).

    Args:
        database: the database's name; the server's user is always "search".
    """
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
        run_tool("createdb", "-h", folder, "-U", "search", database, folder=folder)
        yield f"postgresql://search@/{database}?host={folder}"
    finally:
        if started:
            # Not checked: a failure to start must not be hidden by the failure to stop it.
            run_tool("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", folder=folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)
