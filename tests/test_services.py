"""The managed redis-server and the password-aware Colmena queues, against a real redis-server."""

import ipaddress
import threading
import time
from pathlib import Path

import psutil
import pytest
from colmena.queue.redis import RedisQueues

from configs.services.queues import AuthRedisQueues, ManagedRedis, ServiceError, connect_redis, redis_answers
from tests.conftest import free_port, needs_redis
from thinkers.topics import DESIGN_TOPICS

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
    password, started, _ = connect_redis(server.host, server.port, server.password, tmp_path / "other")
    assert started is None and password == server.password


def test_a_second_run_starts_its_own_server_when_no_port_was_named(server, tmp_path):
    """Another run's password-protected server sits on the default port: a run that named no port starts its own
    on a free one; a run that named that port gets the one-line error instead."""
    password, started, port = connect_redis(server.host, server.port, None, tmp_path / "second", fixed_port=False)
    try:
        assert started is not None and port != server.port and password == started.password
        assert redis_answers(server.host, port, password)
        assert redis_answers(server.host, server.port, server.password)  # the first run's server is untouched
    finally:
        started.stop()
    with pytest.raises(ServiceError, match="requires a password"):
        connect_redis(server.host, server.port, None, tmp_path / "third", fixed_port=True)


@pytest.mark.timeout(60)
def test_task_server_side_survives_a_long_idle_wait(server):
    """A blocking wait for the next task longer than redis-py's default 5 s socket timeout must not fail.

    With that default, redis-py times the read out every 5 s and re-sends BLPOP (a popped message can be lost
    in between) until its 10 retries run out, about a minute in; then the task server dies. Seen in an NWChem
    campaign whose tasks all outlasted that minute.

    Those retries would also hide the bug from a 6 s test, so both clients below have them turned off: a read
    that times out raises at once. The control, a client with redis-py's default socket timeout, shows that a
    6 s idle ``BLPOP`` does raise ``redis.TimeoutError`` there; the queue's task-server side, waiting as long at
    the same time, must still be waiting and then receive the task.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    no_retries = Retry(NoBackoff(), 0)
    queues = AuthRedisQueues(DESIGN_TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="idle-test")
    assert queues.redis_client.connection_pool.connection_kwargs["socket_timeout"] is None
    queues.redis_client.set_retry(no_retries)  # also applied to the connection its ping already opened
    control = redis.StrictRedis(host=server.host, port=server.port, password=server.password, retry=no_retries)
    assert control.connection_pool.connection_kwargs["socket_timeout"] == 5  # redis-py's default: the bug's setting
    received, errors, control_errors = [], [], []

    def serve():
        try:
            received.append(queues.get_task())
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    def wait_with_the_default_timeout():
        started = time.monotonic()
        try:
            control.blpop("idle-test-nothing-ever-comes", timeout=0)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            control_errors.append((exc, time.monotonic() - started))

    thread = threading.Thread(target=serve, daemon=True)
    control_thread = threading.Thread(target=wait_with_the_default_timeout, daemon=True)
    thread.start()
    control_thread.start()
    time.sleep(6)
    control_thread.join(timeout=5)
    assert len(control_errors) == 1, "the control's idle BLPOP should have timed out within the wait"
    (exc, waited), = control_errors
    assert isinstance(exc, redis.TimeoutError) and 4 < waited < 6.5, (exc, waited)
    assert thread.is_alive() and not errors, errors  # the task server is still waiting, after longer than 5 s
    client = AuthRedisQueues(DESIGN_TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="idle-test")
    client.send_inputs(1, method="noop", topic=DESIGN_TOPICS[0])
    thread.join(timeout=20)
    assert not errors, errors
    assert received and received[0][0] == DESIGN_TOPICS[0]
    task = received[0][1]
    task.deserialize()
    assert task.method == "noop" and task.args == (1,)
    control.close()


def test_a_client_without_the_password_is_refused_and_only_loopback_listens(server):
    """The closed door: nothing reaches Colmena's (pickled) queues without the password, and only from here."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    no_retry = Retry(NoBackoff(), 0)  # redis-py would retry a refusal with back-off for seconds; once tells
    stranger = redis.Redis(host=server.host, port=server.port, socket_timeout=5, retry=no_retry)
    with pytest.raises(redis.AuthenticationError):
        stranger.rpush("molsteer-anything-requests", b"\x80\x04pickled payload")
    with pytest.raises(redis.AuthenticationError):
        stranger.keys("*")
    wrong = redis.Redis(host=server.host, port=server.port, password="guess", socket_timeout=5, retry=no_retry)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening


def _loopback(ip: str) -> bool:
    """Whether a socket address is 127.0.0.1, also in the IPv4-mapped form ZeroMQ's IPv6 sockets report."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address == ipaddress.IPv4Address("127.0.0.1")


def _zmq_handshake(port: int, keys: tuple[bytes, bytes, bytes] | None, timeout: float = 10.0) -> str:
    """Connect a ZeroMQ DEALER to ``port`` (plain, or CurveZMQ with (public, secret, server public) keys) and
    report how the handshake ended: ``"succeeded"`` or ``"failed"``."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys
    failed = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | failed)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        if not monitor.poll(int(timeout * 1000)):
            return "no answer"
        event = recv_monitor_message(monitor)["event"]
        return "succeeded" if event == zmq.EVENT_HANDSHAKE_SUCCEEDED else "failed"
    finally:
        sock.disable_monitor()
        monitor.close()
        sock.close()
        context.term()


@pytest.mark.timeout(120)
def test_parsl_sockets_are_encrypted_and_bound_to_loopback(tmp_path):
    """The other door: the interchange binds loopback only and speaks CurveZMQ, never plain pickles.

    Checked on the real processes of the local site's configuration: every socket its interchanges listen on
    (and the submit side's sockets they connect back to) is bound to 127.0.0.1; each executor's certificate
    directory is private and holds the keys; a ZeroMQ client that speaks plain ZeroMQ, or CurveZMQ with keys
    of its own, fails the handshake, while one with this run's client keys completes it.
    """
    import parsl
    import zmq.auth
    from parsl.executors import HighThroughputExecutor

    from configs.sites.catalog import SiteOptions, local

    config = local(tmp_path, SiteOptions(qc_workers=1, ml_workers=1))
    assert Path(config.run_dir).is_relative_to(tmp_path)
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    dfk = parsl.DataFlowKernel(config)
    interchanges, started = [], []
    try:
        executors = [e for e in dfk.executors.values() if isinstance(e, HighThroughputExecutor)]
        assert sorted(e.label for e in executors) == ["ml", "qc"]
        children = {child.pid for child in psutil.Process().children()}
        for executor in executors:
            interchange = psutil.Process(executor.interchange_proc.pid)
            assert interchange.pid in children and interchange.is_running()
            interchanges.append(interchange)

            listening = [c.laddr for c in interchange.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            assert executor.worker_port in {address.port for address in listening}, listening
            assert all(_loopback(address.ip) for address in listening), listening
            # The sockets the interchange connects back to are bound by this (the submit) process.
            mine = {c.laddr.port: c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
            for port in (executor.outgoing_q.port, executor.incoming_q.port, executor.command_client.port):
                assert port in mine and _loopback(mine[port]), (port, mine)

            assert _zmq_handshake(executor.worker_port, None) == "failed"  # plain ZeroMQ: no pickle gets in
            cert_dir = Path(executor.cert_dir or "no certificates")
            assert cert_dir.is_dir() and cert_dir.is_relative_to(tmp_path)
            assert cert_dir.stat().st_mode & 0o777 == 0o700
            assert {"server.key", "server.key_secret", "client.key", "client.key_secret"} <= {
                p.name for p in cert_dir.iterdir()}
            server_public, _ = zmq.auth.load_certificate(cert_dir / "server.key")
            client_public, client_secret = zmq.auth.load_certificate(cert_dir / "client.key_secret")
            stranger_public, stranger_secret = zmq.curve_keypair()
            assert _zmq_handshake(executor.worker_port, (stranger_public, stranger_secret, server_public)) == "failed"
            assert _zmq_handshake(executor.worker_port, (client_public, client_secret, server_public)) == "succeeded"
        # the interchanges, and the worker pools if already started
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    finally:
        dfk.cleanup()
    assert interchanges
    _, alive = psutil.wait_procs(started, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    for interchange in interchanges:
        assert not interchange.is_running() or interchange.status() == psutil.STATUS_ZOMBIE


@pytest.mark.timeout(60)
@pytest.mark.parametrize("queue_class", [RedisQueues, AuthRedisQueues])
def test_a_result_taken_before_its_task_is_counted_leaves_no_task_active(server, queue_class):
    """The race that kept finished campaigns alive: the answer comes back between Colmena's push of a request
    and its counting of the task as active, and another thread takes it.

    Reproduced deterministically: the client's push is wrapped so that, right after it, a server side answers
    and the client takes the result, before ``send_inputs`` goes on. Colmena's own queues then count one task
    active for ever (so its result processors never stop); ours count none.
    """
    client = AuthRedisQueues(DESIGN_TOPICS, hostname=server.host, port=server.port, password=server.password,
                             prefix="race-test") if queue_class is AuthRedisQueues else _colmena_queues(server)
    worker = AuthRedisQueues(DESIGN_TOPICS, hostname=server.host, port=server.port, password=server.password,
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
    task_id = client.send_inputs(1, method="noop", topic=DESIGN_TOPICS[0])
    assert taken and taken[0].task_id == task_id and taken[0].value == 42
    expected = 1 if queue_class is RedisQueues else 0
    assert client.active_count == expected
    if expected == 0:
        assert client.wait_until_done(timeout=1)
        client._send_request = push  # an ordinary task afterwards is counted and settled as usual
        second = client.send_inputs(2, method="noop", topic=DESIGN_TOPICS[0])
        assert client.active_count == 1
        _, task = worker.get_task(timeout=10)
        task.set_result(7)
        worker.send_result(task)
        assert client.get_result(topic=DESIGN_TOPICS[0], timeout=10).task_id == second
        assert client.active_count == 0 and not client._counted and not client._answered_early


def _colmena_queues(server) -> RedisQueues:
    """Colmena's own Redis queues, only connecting with the managed server's password (which Colmena cannot)."""
    import redis

    class PasswordOnly(RedisQueues):
        def connect(self):
            if not self.redis_client:
                self.redis_client = redis.StrictRedis(host=server.host, port=server.port, password=server.password,
                                                      decode_responses=True)

    return PasswordOnly(DESIGN_TOPICS, hostname=server.host, port=server.port, prefix="race-test")
