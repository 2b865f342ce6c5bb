"""Services a campaign needs and, where it can, starts for the user: a Redis server for Colmena's queues.

A started server listens on loopback only, requires a random password, persists nothing (its working
directory is inside the run directory), and is stopped on every exit path by :meth:`ManagedRedis.stop`.
"""

from __future__ import annotations

import ctypes
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from colmena.queue.redis import RedisQueues
from proxystore.connectors.redis import RedisConnector
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class ServiceError(RuntimeError):
    """A service cannot be used or started; the message says what to do."""


def redis_answers(host: str, port: int, password: str | None, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers there with this password.

    Raises:
        ServiceError: something answers but refuses our password (we must not start another server there).
    """
    # No retries: redis-py 8 retries a refused connection with back-off for about 2 s by default, and this is a
    # question ("is anything there?") asked at every start, twice when this run starts its own server.
    client = redis.Redis(host=host, port=port, password=password, socket_connect_timeout=timeout,
                         socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.exceptions.AuthenticationError as exc:
        problem = "requires a password: pass --redis-password" if password is None \
            else "refuses that password (--redis-password)"
        raise ServiceError(
            f"The Redis server at {host}:{port} {problem}, or choose a free --redis-port "
            "and molsteer will start its own server there"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc):
            raise ServiceError(
                f"The Redis server at {host}:{port} requires a password: pass --redis-password"
            ) from exc
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    finally:
        client.close()


class RedisWatch:
    """Notices when the queues' Redis server stops answering or is restarted, which both lose queued tasks.

    Colmena keeps tasks and results only in Redis lists; a restarted server (nothing is persisted) has
    forgotten them, while redis-py reconnects silently, so the campaign would wait forever for results that no
    longer exist. A server's ``run_id`` changes at every start: comparing it tells a restart from a hiccup.
    """

    def __init__(self, host: str, port: int, password: str | None, period: float = 2.0):
        self.host, self.port, self.password, self.period = host, port, password, period
        self.run_id = self._run_id()
        self._checked = time.monotonic()

    def _run_id(self) -> str | None:
        client = redis.Redis(host=self.host, port=self.port, password=self.password, socket_connect_timeout=2,
                             socket_timeout=2)
        try:
            return str(client.info("server").get("run_id"))
        except (redis.exceptions.RedisError, OSError):
            return None
        finally:
            client.close()

    def problem(self, now: bool = False) -> str | None:
        """None while the same server answers; otherwise what happened (checked every ``period`` s, or ``now``)."""
        if not now and time.monotonic() - self._checked < self.period:
            return None
        self._checked = time.monotonic()
        now = self._run_id()
        if now is None:
            return f"Redis at {self.host}:{self.port} stopped answering"
        if now != self.run_id:
            return f"Redis at {self.host}:{self.port} was restarted, and the tasks queued in it are lost"
        return None


def _die_with_parent() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent dies (``PR_SET_PDEATHSIG``).

    The first of several guards (see ``configs/services/lifeline.py``): redis-server goes the moment ``run.py`` does.
    """
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class ManagedRedis:
    """A ``redis-server`` owned by one run."""

    def __init__(self, port: int, work_dir: Path):
        self.host = "127.0.0.1"
        self.port = port
        self.password = secrets.token_urlsafe(24)
        self.work_dir = Path(work_dir)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 15.0) -> ManagedRedis:
        """Start the server and wait until it answers.

        Raises:
            ServiceError: ``redis-server`` is not installed, or it exits or stays silent.
        """
        executable = shutil.which("redis-server")
        if executable is None:
            raise ServiceError("redis-server is not installed: run 'make run' (as root) or "
                               "'sudo apt-get install redis-server'")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "redis.conf"
        config.touch(mode=0o600)
        # The password goes in a private file, not on the command line where `ps` would show it.
        config.write_text(
            f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\nrequirepass {self.password}\n"
            f"dir {self.work_dir.resolve()}\nsave \"\"\nappendonly no\n"
            f"logfile {(self.work_dir / 'redis.log').resolve()}\ndaemonize no\n"
        )
        self.process = subprocess.Popen([executable, str(config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.work_dir / "redis.log")
                tail = log.read_text().strip().splitlines()[-3:] if log.exists() else []
                self.process = None
                raise ServiceError(f"redis-server exited at start on port {self.port}: {' | '.join(tail)}")
            if redis_answers(self.host, self.port, self.password, timeout=0.5):
                logger.info("Started redis-server (pid %d) on %s:%d", self.process.pid, self.host, self.port)
                return self
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server, politely then firmly; safe to call more than once."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()  # redis-server shuts down cleanly on SIGTERM (and saves nothing: save "")
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logger.info("Stopped redis-server (pid %d)", process.pid)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def connect_redis(host: str, port: int, password: str | None, work_dir: Path,
                  fixed_port: bool = True) -> tuple[str | None, ManagedRedis | None, int]:
    """The Redis server the run's queues use: one that answers at ``host:port``, or one this run starts.

    With ``fixed_port`` (``--redis-port`` named, or workers on another site reaching this port through a
    tunnel) only ``port`` is considered. Without it, a server that answers there with this password is used,
    and otherwise the run starts its own on a free port, so a second campaign on the same machine neither
    trips over the first one's password-protected server nor fights it for the port.

    Returns:
        The password to use, the started server (``None`` when an existing one is used), and its port.

    Raises:
        ServiceError: a remote host does not answer, or a local server cannot be started.
    """
    try:
        if redis_answers(host, port, password):
            logger.info("Using the Redis server already running at %s:%d", host, port)
            return password, None, port
    except ServiceError:
        if fixed_port:
            raise
        logger.info("The Redis server at %s:%d is another's (it wants a password); starting this run's own",
                    host, port)
    if host not in LOCAL_HOSTS:
        raise ServiceError(f"No Redis server answers at {host}:{port}; start one there or use a local host")
    if fixed_port:
        server = ManagedRedis(port, work_dir).start()
        return server.password, server, port
    for attempt in range(3):  # another process may take the free port between the pick and redis-server's bind
        try:
            server = ManagedRedis(free_port(), work_dir).start()
            return server.password, server, server.port
        except ServiceError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class AuthRedisQueues(RedisQueues):
    """Colmena's Redis queues with a password, and a count of outstanding tasks a fast result cannot corrupt.

    Colmena 0.7's own ``connect`` takes no password. And Colmena 0.7.2 pushes a request to Redis and only then
    adds its id to the client's set of active tasks. When the result comes back first and another agent thread
    takes it in between (a lookup or a small ``ml`` task answers in milliseconds; a loaded machine deschedules
    the sender), ``get_result`` discards an id that is not there yet, and ``send_inputs`` then adds it for
    ever. Colmena's result processors run until no task is active, so the campaign never ended after its
    budget; seen in 4 of 24 benchmark campaigns on a busy machine. Here the client remembers which ids it has
    counted as sent; a result whose id is not among them was answered early, and its id is removed as soon as
    ``send_inputs`` adds it.
    """

    def __init__(self, *args, password: str | None = None, max_retries: int = 0, **kwargs):
        self.password = password  # set before the parent's __init__, which connects
        self.max_retries = max_retries
        self._counted: set[str] = set()  # ids sent and counted active, whose result has not been taken
        self._answered_early: set[str] = set()  # ids whose result was taken before they were counted
        super().__init__(*args, **kwargs)

    def send_inputs(self, *args, max_retries: int | None = None, **kwargs) -> str:
        """Colmena's ``send_inputs``, with the run's ``--max-retries`` unless a caller asks otherwise.

        Colmena's task server runs a task again when it fails as a task (its worker died under it, Parsl lost
        the manager); a QC failure comes back as a successful task carrying a failed record, and is not rerun.
        """
        task_id = super().send_inputs(*args, max_retries=self.max_retries if max_retries is None else max_retries,
                                      **kwargs)
        with self._active_lock:
            if task_id in self._answered_early:
                self._answered_early.discard(task_id)
                self._active_tasks.discard(task_id)
                if not self._active_tasks:
                    self._all_complete.set()
            else:
                self._counted.add(task_id)
        return task_id

    def get_result(self, topic: str = "default", timeout: float | None = None):
        """Colmena's ``get_result``; a result that beat its own ``send_inputs`` is settled when that returns."""
        result = super().get_result(topic=topic, timeout=timeout)
        with self._active_lock:
            if result.task_id in self._counted:
                self._counted.discard(result.task_id)
            else:
                self._answered_early.add(result.task_id)
        return result

    def connect(self) -> None:
        """Connect with the password; the queue re-connects this way after being pickled to another process.

        ``socket_timeout=None``: redis-py 8 gives every socket a 5 s read timeout by default, but Colmena's task
        server waits for the next request with a blocking ``BLPOP`` that may rightly last minutes (every slot
        busy with NWChem). With the default, that wait dies with ``TimeoutError`` and takes the task server with it.
        """
        if not self.redis_client:
            self.redis_client = redis.StrictRedis(host=self.hostname, port=self.port, password=self.password,
                                                  decode_responses=True, socket_timeout=None,
                                                  socket_connect_timeout=10)
            self.redis_client.ping()


class AuthRedisConnector(RedisConnector):
    """ProxyStore's Redis connector, with a password (its own takes none).

    Used when workers do not share this site's file system (``--site multisite``): a proxy then carries this
    configuration to the worker, which reads the object from the same Redis through the SSH tunnel (same port
    number on both sides). The password travels with the proxy, inside the encrypted task message.
    """

    def __init__(self, hostname: str, port: int, password: str | None = None, clear: bool = False):
        super().__init__(hostname, port, clear=clear)
        self.password = password
        self._redis_client = redis.StrictRedis(host=hostname, port=port, password=password)

    def config(self) -> dict:  # noqa: D102
        return {**super().config(), "password": self.password}
