"""The managed redis-server and the password-aware Colmena queues, against a real redis-server."""

import threading
import time

import psutil
import pytest
from colmena.queue.redis import RedisQueues

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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("queue_class", [RedisQueues, AuthRedisQueues])
def test_a_result_taken_before_its_task_is_counted_leaves_no_task_active(server, queue_class):
    """The race that kept finished campaigns alive: the answer comes back between Colmena's push of a request
    and its counting of the task as active, and another thread takes it.

    Reproduced deterministically: the client's push is wrapped so that, right after it, a server side answers
    and the client takes the result, before ``send_inputs`` goes on. Colmena's own queues then count one task
    active for ever (so its result processors never stop); ours count none.
    """
    client = AuthRedisQueues(TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="race-test") if queue_class is AuthRedisQueues else _colmena_queues(server)
    worker = AuthRedisQueues(TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="race-test")
    push = client._send_request
    taken = []

    def push_then_answer_and_take(message, topic):
        push(message, topic)
        _, task = worker.get_task(timeout=10)
        task.set_result(42)
        worker.send_result(task)
        taken.append(client.get_result(topic=topic, timeout=10))

    client._send_request = push_then_answer_and_take
    task_id = client.send_inputs(1, method="noop", topic=TOPICS[0])
    assert taken and taken[0].task_id == task_id and taken[0].value == 42
    expected = 1 if queue_class is RedisQueues else 0
    assert client.active_count == expected
    if expected == 0:
        assert client.wait_until_done(timeout=1)
        client._send_request = push  # an ordinary task afterwards is counted and settled as usual
        second = client.send_inputs(2, method="noop", topic=TOPICS[0])
        assert client.active_count == 1
        _, task = worker.get_task(timeout=10)
        task.set_result(7)
        worker.send_result(task)
        assert client.get_result(topic=TOPICS[0], timeout=10).task_id == second
        assert client.active_count == 0 and not client._counted and not client._answered_early


def _colmena_queues(server) -> RedisQueues:
    """Colmena's own Redis queues, only connecting with the managed server's password (which Colmena cannot)."""
    import redis

    class PasswordOnly(RedisQueues):
        def connect(self):
            if not self.redis_client:
                self.redis_client = redis.StrictRedis(host=server.host, port=server.port, password=server.password,
                                                      decode_responses=True)

    return PasswordOnly(TOPICS, hostname=server.host, port=server.port, prefix="race-test")
