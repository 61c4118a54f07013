"""A private flashsale stack for the ops Python (scripts/check-dashboard.py, bench/bench.py).

What both need, once: free loopback ports, polling, HTTP, a RESP client, reading a
/metrics page, and the processes of a private stack (redis-server, PostgreSQL for the ledger,
gateways and workers from target/<profile>, the Redis and PostgreSQL Prometheus exporters),
each logging to a file in one temporary directory and all stopped by Stack.stop(). The shell scripts have the same stack in
scripts/stack.sh. Never uses a Redis or PostgreSQL it did not start (not the machine's 6379
or 5432). Standard library only.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class StackError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, predicate, timeout: float, interval: float = 0.1):
    """Polls `predicate` until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as error:  # not up yet
            last_error = error
        time.sleep(interval)
    raise StackError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last_error})" if last_error else "")
    )


def http(method: str, url: str, body=None, headers=None, timeout: float = 5.0):
    """One HTTP call; returns (status, headers, parsed JSON body or text). Never raises on 4xx/5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, response_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, response_headers, raw = error.code, error.headers, error.read()
    text = raw.decode(errors="replace")
    try:
        return status, response_headers, json.loads(text)
    except ValueError:
        return status, response_headers, text


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """A Prometheus text page as {(name, sorted label pairs): value}."""
    status, _, text = http("GET", url, timeout=5)
    if status != 200 or not isinstance(text, str):
        raise StackError(f"GET {url}: {status}")
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)", line)
        if not match:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or "")))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


class Redis:
    """A minimal RESP2 client: no dependency, exact replies."""

    def __init__(self, port: int, timeout: float = 60):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def __call__(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self._read()

    def close(self):
        self.file.close()
        self.sock.close()

    def _read(self):
        line = self.file.readline()
        if not line:
            raise StackError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise StackError(f"Redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2].decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise StackError(f"unexpected Redis reply {line!r}")


def postgres_bin_dir() -> Path:
    """Where initdb, postgres and psql are: `pg_config --bindir`, the newest
    /usr/lib/postgresql/N/bin (Debian keeps them off PATH), or PATH; as testkit looks."""

    def complete(d: Path) -> bool:
        return all((d / p).is_file() for p in ("initdb", "postgres", "psql"))

    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and complete(Path(out.stdout.strip())):
            return Path(out.stdout.strip())
    except OSError:
        pass
    majors = sorted(
        (int(d.name), d / "bin") for d in Path("/usr/lib/postgresql").glob("*") if d.name.isdigit()
    )
    for _, d in reversed(majors):
        if complete(d):
            return d
    initdb = shutil.which("initdb")
    if initdb and complete(Path(initdb).parent):
        return Path(initdb).parent
    raise StackError("PostgreSQL's initdb/postgres/psql not found: run scripts/install-deps.sh")


def exporter_binary(*names: str) -> str:
    """The first of `names` on PATH (Debian's package name, then the upstream binary's)."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise StackError(f"none of {', '.join(names)} found: run scripts/install-deps.sh ops")


class Stack:
    """The processes of one private stack, each logging to <dir>/<name>.log."""

    def __init__(self, profile: str = "release", bin_dir: Path | None = None, prefix: str = "flashsale-stack."):
        self.bin = bin_dir or ROOT / "target" / profile
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.postgres_proc: subprocess.Popen | None = None
        self.pg_bin: Path | None = None
        self.pg_port: int | None = None
        self.admin_token = os.urandom(16).hex()

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
        with open(self.dir / f"{name}.log", "ab") as log_file:  # the child keeps its own copy
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=popen.pop("cwd", self.dir),
                start_new_session=True,  # our signal handling decides when children stop
                **popen,
            )
        self.procs.append((name, proc))
        return proc

    def wait_http(self, name: str, proc: subprocess.Popen, url: str, timeout: float = 20) -> None:
        def up():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")
            status, _, _ = http("GET", url, timeout=1)
            return status == 200

        wait_until(f"{name} at {url}", up, timeout, interval=0.05)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])

    def redis(self, *extra: str) -> int:
        """A redis-server without persistence; returns its port."""
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), *extra]
        proc = self.start("redis", argv)

        def ping():
            if proc.poll() is not None:
                raise StackError(f"redis-server exited:\n{self.tail('redis')}")
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")

        wait_until("redis-server", ping, 10, interval=0.05)
        return port

    def postgres(self) -> str:
        """A PostgreSQL server (trust auth, 127.0.0.1 only, fsync off) with a database
        `flashsale`; returns its DATABASE_URL. PostgreSQL refuses to run as root: then it runs
        as the `postgres` user (Debian's package creates it), which owns its directory."""
        self.pg_bin = postgres_bin_dir()
        pg_dir = self.dir / "pg"
        pg_dir.mkdir()
        as_user = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise StackError("no postgres user to run PostgreSQL as (apt-get install postgresql)") from None
            os.chmod(self.dir, 0o711)
            os.chown(pg_dir, user.pw_uid, user.pw_gid)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        initdb = subprocess.run(
            [str(self.pg_bin / "initdb"), "-D", str(pg_dir / "data"), "--username=postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            cwd=pg_dir, capture_output=True, text=True, **as_user,
        )
        if initdb.returncode != 0:
            raise StackError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        self.pg_port = free_port()
        proc = self.start(
            "postgres",
            [str(self.pg_bin / "postgres"), "-D", str(pg_dir / "data"), "-p", str(self.pg_port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={pg_dir}",
             "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "dynamic_shared_memory_type=mmap"],
            cwd=pg_dir, **as_user,
        )
        # Stopped last, by stop(), once its clients are gone.
        self.procs.pop()
        self.postgres_proc = proc

        def ready():
            if proc.poll() is not None:
                raise StackError(f"postgres exited:\n{self.tail('postgres')}")
            return self.psql("select 1", database="postgres", check=False) == "1"

        wait_until("postgres", ready, 30, interval=0.05)
        self.psql("create database flashsale", database="postgres")
        return f"postgres://postgres@127.0.0.1:{self.pg_port}/flashsale"

    def psql(self, sql: str, database: str = "flashsale", check: bool = True) -> str | None:
        """Runs `sql` in the ledger; rows unaligned, columns separated by `|`."""
        out = subprocess.run(
            [str(self.pg_bin / "psql"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
             "-d", database, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            if check:
                raise StackError(f"psql {sql!r}: {out.stderr.strip()}")
            return None
        return out.stdout.strip()

    def gateway(self, name: str, redis_url: str, database_url: str | None = None,
                env: dict[str, str] | None = None, ready: bool = True) -> tuple[str, int]:
        """A gateway; waits for /readyz (a worker must have lifted the sales fence) unless
        `ready` is false, then only for /healthz. Returns (base URL, port)."""
        port = free_port()
        proc = self.start(
            name,
            [str(self.bin / "flashsale-api")],
            {
                "REDIS_URL": redis_url,
                **({"DATABASE_URL": database_url} if database_url else {}),
                "LISTEN_ADDR": f"127.0.0.1:{port}",
                "ADMIN_TOKEN": self.admin_token,
                "RUST_LOG": "warn",
                **(env or {}),
            },
        )
        url = f"http://127.0.0.1:{port}"
        self.wait_http(name, proc, f"{url}/readyz" if ready else f"{url}/healthz", timeout=30)
        return url, port

    def worker(self, name: str, redis_url: str, database_url: str, env: dict[str, str] | None = None) -> int:
        """A worker (it requires the ledger); returns its metrics port."""
        port = free_port()
        proc = self.start(
            name,
            [str(self.bin / "flashsale-worker")],
            {
                "REDIS_URL": redis_url,
                "DATABASE_URL": database_url,
                "METRICS_ADDR": f"127.0.0.1:{port}",
                "CONSUMER_NAME": name,
                "RUST_LOG": "warn",
                **(env or {}),
            },
        )
        self.wait_http(name, proc, f"http://127.0.0.1:{port}/healthz")
        return port

    def wait_metric(self, name: str, proc: subprocess.Popen, url: str, metric: str, timeout: float = 20) -> None:
        """Waits until the page at `url` reports `metric` as 1 (an exporter that reached its server)."""

        def reports_one():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with status {proc.returncode}:\n{self.tail(name)}")
            return any(n == metric and value == 1 for (n, _), value in scrape(url).items())

        wait_until(f"{name} to report {metric} 1 at {url}", reports_one, timeout, interval=0.1)

    def redis_exporter(self, redis_port: int) -> int:
        """redis_exporter (Debian's prometheus-redis-exporter) against the Redis on `redis_port`;
        returns its metrics port once it reports redis_up 1."""
        port = free_port()
        proc = self.start(
            "redis-exporter",
            [exporter_binary("prometheus-redis-exporter", "redis_exporter"),
             f"-redis.addr=redis://127.0.0.1:{redis_port}", f"-web.listen-address=127.0.0.1:{port}"],
        )
        self.wait_metric("redis-exporter", proc, f"http://127.0.0.1:{port}/metrics", "redis_up")
        return port

    def postgres_exporter(self) -> int:
        """postgres_exporter (Debian's prometheus-postgres-exporter) against the ledger started by
        postgres(); returns its metrics port once it reports pg_up 1."""
        if self.pg_port is None:
            raise StackError("postgres_exporter() needs postgres() first")
        port = free_port()
        proc = self.start(
            "postgres-exporter",
            [exporter_binary("prometheus-postgres-exporter", "postgres_exporter"),
             f"--web.listen-address=127.0.0.1:{port}"],
            {"DATA_SOURCE_NAME": f"postgresql://postgres@127.0.0.1:{self.pg_port}/flashsale?sslmode=disable"},
        )
        self.wait_metric("postgres-exporter", proc, f"http://127.0.0.1:{port}/metrics", "pg_up")
        return port

    def stop(self) -> None:
        """SIGTERM to every process, SIGKILL to those still up after 10 s; then PostgreSQL
        (fast shutdown, then immediate: a SIGKILLed postmaster would leave its server
        processes behind); then the directory goes."""
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.postgres_proc is not None:
            for sig, wait in ((signal.SIGINT, 10), (signal.SIGQUIT, 5), (signal.SIGKILL, 5)):
                if self.postgres_proc.poll() is not None:
                    break
                self.postgres_proc.send_signal(sig)
                try:
                    self.postgres_proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
            self.postgres_proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
