"""The managed redis-server and the password-aware Colmena queues, against a real redis-server."""

import threading
import time

import psutil
import pytest

from configs.names import TOPICS
from configs.services import AuthRedisQueues, ManagedRedis, ServiceError, connect_redis, redis_answers
from tests.conftest import free_port, needs_redis

pytestmark = needs_redis


@pytest.fixture
def server(tmp_path):
    managed = ManagedRedis(free_port(), tmp_path / "redis").start()
    yield managed
    managed.stop()


def test_started_server_requires_its_password_and_stops(server, tmp_path):
    assert redis_answers(server.host, server.port, server.password)
    with pytest.raises(ServiceError, match="requires a password"):
        redis_answers(server.host, server.port, None)
    with pytest.raises(ServiceError, match="refuses that password"):
        redis_answers(server.host, server.port, "wrong")
    assert server.password not in " ".join(psutil.Process(server.process.pid).cmdline())
    pid = server.process.pid
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not redis_answers(server.host, server.port, server.password)
    assert not list((tmp_path / "redis").glob("*.rdb"))  # nothing persisted


def test_connect_reuses_a_running_server(server, tmp_path):
    password, started = connect_redis(server.host, server.port, server.password, tmp_path / "other")
    assert started is None and password == server.password


@pytest.mark.timeout(60)
def test_task_server_side_survives_a_long_idle_wait(server):
    """A blocking wait for the next task longer than redis-py's default 5 s socket timeout must not fail.

    With that default, redis-py times the read out every 5 s and re-sends BLPOP (a popped message can be lost
    in between) until its 10 retries run out, about a minute in; then the task server dies. Seen in an NWChem
    campaign whose tasks all outlasted that minute.
    """
    queues = AuthRedisQueues(TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="idle-test")
    assert queues.redis_client.connection_pool.connection_kwargs["socket_timeout"] is None
    received, errors = [], []

    def serve():
        try:
            received.append(queues.get_task())
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    time.sleep(6)
    client = AuthRedisQueues(TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="idle-test")
    client.send_inputs(1, method="noop", topic=TOPICS[0])
    thread.join(timeout=20)
    assert not errors, errors
    assert received and received[0][0] == TOPICS[0]


def test_a_client_without_the_password_is_refused_and_only_loopback_listens(server):
    """The closed door: nothing reaches Colmena's (pickled) queues without the password, and only from here."""
    import redis

    stranger = redis.Redis(host=server.host, port=server.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        stranger.rpush("molsteer-anything-requests", b"\x80\x04pickled payload")
    with pytest.raises(redis.AuthenticationError):
        stranger.keys("*")
    wrong = redis.Redis(host=server.host, port=server.port, password="guess", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening


def test_parsl_sockets_are_encrypted_and_bound_to_loopback(tmp_path):
    """The other door: the interchange binds loopback only and speaks CurveZMQ, never plain pickles."""
    from configs.sites import SiteOptions, local

    config = local(tmp_path, SiteOptions(1, 1, 1))
    for executor in config.executors:
        assert executor.encrypted is True
        assert executor.address == "127.0.0.1" and executor.loopback_address == "127.0.0.1"
