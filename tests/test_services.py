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
