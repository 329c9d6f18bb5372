"""The ``postgresql`` conformance backend.

``MECHAKIT_TEST_POSTGRES_URL`` (a libpq URL, ``postgresql://user[:password]@host:port/db``)
names a server to use as it is; otherwise a throw-away cluster is made with ``initdb`` in a
temp dir (trust auth, superuser ``postgres``, fsync off) and ``postgres`` is started on a
free loopback port; otherwise a ``postgres`` container via testcontainers.

PostgreSQL refuses to run as root, so when the tests run as root the cluster is created
and run as an unprivileged account (``nobody``, else ``postgres``) through ``setpriv``,
which execs the server in place so that signals reach it directly. The data survives a
restart (fault tests), unlike the Redis backend's.

Placeholders: ``{backend.url}``, ``{backend.host}``, ``{backend.port}``, ``{backend.user}``
and ``{backend.dbname}``.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailable,
    LocalProcess,
    free_port,
)
from .containers import started, testcontainers

POSTGRES_IMAGE = "postgres:16-alpine"
UNPRIVILEGED_USERS = ("nobody", "postgres")


class PostgresBackend(Backend):
    name = "postgresql"
    env_var = "MECHAKIT_TEST_POSTGRES_URL"

    def parse_address(self, value: str) -> dict[str, str]:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise BackendUnavailable(
                f"{self.env_var} must be a postgresql://user@host:port/dbname URL"
            )
        return {
            "url": value,
            "host": parts.hostname,
            "port": str(parts.port or 5432),
            "user": unquote(parts.username or "postgres"),
            "dbname": unquote(parts.path.lstrip("/")) or unquote(parts.username or "postgres"),
        }

    def start_local(self, workdir: Path) -> BackendInfo:
        initdb, postgres = _find_binary("initdb"), _find_binary("postgres")
        if initdb is None or postgres is None:
            raise BackendUnavailable(
                "initdb/postgres not found on PATH or in /usr/lib/postgresql/*/bin; "
                f"apt-get install postgresql or set {self.env_var}"
            )
        run_as = _unprivileged_prefix(workdir)
        data = workdir / "data"
        init = subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=workdir, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        if init.returncode != 0:
            shutil.rmtree(workdir, ignore_errors=True)
            output = (init.stdout + init.stderr).decode(errors="replace")[-800:]
            raise BackendUnavailable(f"initdb failed (exit {init.returncode}):\n{output}")
        port = free_port()
        argv = [
            *run_as, postgres,
            "-D", str(data),
            "-p", str(port),
            "-k", str(workdir),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        process = _Postmaster(argv, port, workdir, "postgres")
        try:
            process.start()
        except BackendUnavailable:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return process.backend_info(_values("127.0.0.1", str(port), "postgres", "postgres"))

    def start_container(self) -> BackendInfo:
        container = testcontainers("postgres", "PostgresContainer")(POSTGRES_IMAGE, driver=None)
        host, port = started(container, POSTGRES_IMAGE, port=5432)
        values = _values(host, port, container.username, container.dbname, container.password)
        return BackendInfo(values, source="testcontainers", stop=container.stop)


class _Postmaster(LocalProcess):
    """``postgres`` run directly: ready once it says so, stopped by a fast shutdown.

    SIGTERM would be a "smart" shutdown that waits for every client (a connection pool
    never leaves), so SIGINT is used; a server that ignores it gets SIGQUIT.
    """

    def start(self, timeout: float = 30.0) -> None:
        seen = self._ready_count()
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while self._ready_count() <= seen:
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-800:]
                self.stop()
                raise BackendUnavailable(f"postgres did not become ready:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGINT, signal.SIGQUIT):
            proc.send_signal(sig)
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                continue
        proc.kill()
        proc.wait()

    def _ready_count(self) -> int:
        if not self.log_path.exists():
            return 0
        return len(_READY.findall(self.log_path.read_text(errors="replace")))


_READY = re.compile(r"database system is ready to accept connections")


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    candidates.sort(key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    return candidates[0] if candidates else None


def _unprivileged_prefix(workdir: Path) -> list[str]:
    """The argv prefix that drops root, after giving ``workdir`` to that account; [] if not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise BackendUnavailable(
            "running as root, and PostgreSQL refuses to; setpriv (util-linux) is needed "
            "to run it as an unprivileged user"
        )
    for user in UNPRIVILEGED_USERS:
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            continue
        os.chown(workdir, account.pw_uid, account.pw_gid)
        return [
            setpriv,
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
            "--",
        ]
    raise BackendUnavailable(
        "running as root, and PostgreSQL refuses to; none of the accounts "
        f"{', '.join(UNPRIVILEGED_USERS)} exists to run it as"
    )


def _values(host: str, port: str, user: str, dbname: str, password: str = "") -> dict[str, str]:
    secret = f":{quote(password, safe='')}" if password else ""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "url": f"postgresql://{quote(user, safe='')}{secret}@{netloc}/{quote(dbname, safe='')}",
        "host": host,
        "port": port,
        "user": user,
        "dbname": dbname,
    }
