"""The Globus Compute task server, against a mocked client and executor: no network, no Globus login."""

from __future__ import annotations

import copy
import math
import threading
import uuid
from concurrent.futures import Future
from unittest import mock

import pytest
from colmena.exceptions import TimeoutException
from colmena.queue import PipeQueues
from colmena.task_server.globus import GlobusComputeTaskServer
from globus_compute_sdk import Executor

from configs.settings.models import SettingsError
from configs.sites import globus
from configs.sites.executors import ML_EXECUTOR, QC_EXECUTOR
from configs.sites.globus import GlobusTaskServer, build_globus_task_server, endpoint_option
from thinkers.topics import ML_TOPIC, QC_TOPIC

QC_EP = "11111111-1111-4111-8111-111111111111"
ML_EP = "22222222-2222-4222-8222-222222222222"


def qc_energy(x):
    return 2 * x


def ml_predict(x):
    return x + 100


METHODS = [(qc_energy, QC_EXECUTOR), (ml_predict, ML_EXECUTOR)]


class FakeClient:
    """Stands in for globus_compute_sdk.Client: keeps what is registered, returns a fresh function id."""

    def __init__(self):
        self.functions: dict[str, object] = {}

    def register_function(self, function):
        func_id = str(uuid.uuid4())
        self.functions[func_id] = function
        return func_id


class FakeExecutor:
    """Stands in for the SDK Executor with its current keywords only (no **kwargs, so funcx_client= fails).

    Every submission is recorded and gets a real Future that the test completes by hand (or, with
    ``run_inline``, by running the registered Colmena wrapper the way an endpoint would).
    """

    instances: list[FakeExecutor] = []
    run_inline = False

    def __init__(self, endpoint_id=None, client=None, batch_size=128, label=""):
        self.endpoint_id = endpoint_id
        self.client = client
        self.batch_size = batch_size
        self.label = label
        self.submitted: list[tuple[str, dict, Future]] = []
        self.shutdown_calls: list[dict] = []
        FakeExecutor.instances.append(self)

    def submit_to_registered_function(self, function_id, args=None, kwargs=None):
        future = Future()
        self.submitted.append((function_id, kwargs, future))
        if self.run_inline:
            result = kwargs["result"].model_copy(deep=True)  # the endpoint works on its own deserialized copy
            future.set_result(self.client.functions[function_id](result))
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.shutdown_calls.append({"wait": wait, "cancel_futures": cancel_futures})


@pytest.fixture
def fake_executor(monkeypatch):
    FakeExecutor.instances = []
    FakeExecutor.run_inline = False
    monkeypatch.setattr(globus, "Executor", FakeExecutor)
    return FakeExecutor


@pytest.fixture
def queues():
    return PipeQueues([QC_TOPIC, ML_TOPIC], keep_inputs=True)


def make_server(queues, client=None):
    return build_globus_task_server(METHODS, queues, {QC_EXECUTOR: QC_EP, ML_EXECUTOR: ML_EP},
                                    client=client or FakeClient())


def executor_for(endpoint):
    matches = [e for e in FakeExecutor.instances if e.endpoint_id == endpoint]
    assert len(matches) == 1, f"expected one executor for {endpoint}, got {len(matches)}"
    return matches[0]


def next_task(queues, method, topic, *args):
    """Send a task as the thinker does and receive it as the task server does."""
    queues.send_inputs(*args, method=method, topic=topic)
    return queues.get_task(timeout=5)


# --- construction -----------------------------------------------------------------------------------------


def test_methods_are_registered_and_routed_to_their_labels_endpoint(queues):
    client = FakeClient()
    server = make_server(queues, client)

    assert isinstance(server, GlobusTaskServer)
    assert isinstance(server, GlobusComputeTaskServer)
    assert set(server.registered_funcs) == {"qc_energy", "ml_predict"}
    qc_id, qc_ep = server.registered_funcs["qc_energy"]
    ml_id, ml_ep = server.registered_funcs["ml_predict"]
    assert (qc_ep, ml_ep) == (QC_EP, ML_EP)
    assert qc_id != ml_id
    # What was registered is Colmena's wrapper of the right function (it takes and returns a Result).
    assert client.functions[qc_id].function is qc_energy
    assert client.functions[ml_id].function is ml_predict
    assert server.method_names == {"qc_energy", "ml_predict"}
    assert server.endpoints == sorted([QC_EP, ML_EP])


def test_endpoint_ids_are_normalised_and_may_be_shared(queues):
    upper = "{" + QC_EP.upper() + "}"  # uuid.UUID accepts braces and upper case; the server stores the canonical form
    server = build_globus_task_server(METHODS, queues, {QC_EXECUTOR: upper, ML_EXECUTOR: f" {QC_EP} "},
                                      client=FakeClient())
    assert {ep for _, ep in server.registered_funcs.values()} == {QC_EP}
    assert server.endpoints == [QC_EP]


def test_a_real_client_is_created_only_when_none_is_given(queues):
    with mock.patch.object(globus, "Client") as client_class:
        client_class.return_value.register_function.side_effect = lambda fn: str(uuid.uuid4())
        make_server(queues, client=FakeClient())
        client_class.assert_not_called()
        server = build_globus_task_server(METHODS, queues, {QC_EXECUTOR: QC_EP, ML_EXECUTOR: ML_EP})
        client_class.assert_called_once_with()
    assert server.fx_client is client_class.return_value


# --- option validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoints, option", [
    ({ML_EXECUTOR: ML_EP}, "--globus-qc-endpoint"),
    ({QC_EXECUTOR: QC_EP, ML_EXECUTOR: None}, "--globus-ml-endpoint"),
    ({QC_EXECUTOR: "  ", ML_EXECUTOR: ML_EP}, "--globus-qc-endpoint"),
])
def test_missing_endpoint_names_the_option(queues, endpoints, option):
    with mock.patch.object(globus, "Client") as client_class:
        with pytest.raises(SettingsError, match=f"^{option} is required with --task-server globus") as info:
            build_globus_task_server(METHODS, queues, endpoints)
        client_class.assert_not_called()  # no login for a command line that cannot work
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["not-a-uuid", QC_EP[:-1], "qc", 12345])
def test_malformed_endpoint_names_the_option_and_the_value(queues, value):
    with mock.patch.object(globus, "Client") as client_class:
        with pytest.raises(SettingsError, match="^--globus-ml-endpoint .* is not a Globus Compute endpoint id") as info:
            build_globus_task_server(METHODS, queues, {QC_EXECUTOR: QC_EP, ML_EXECUTOR: value})
        client_class.assert_not_called()
    assert repr(value) in str(info.value)
    assert "\n" not in str(info.value)


def test_both_endpoints_missing_are_reported_together(queues):
    with pytest.raises(SettingsError) as info:
        build_globus_task_server(METHODS, queues, {}, client=FakeClient())
    message = str(info.value)
    assert "--globus-qc-endpoint" in message and "--globus-ml-endpoint" in message
    assert "\n" not in message


def test_only_labels_in_use_need_an_endpoint(queues):
    server = build_globus_task_server([(qc_energy, QC_EXECUTOR)], queues, {QC_EXECUTOR: QC_EP}, client=FakeClient())
    assert server.endpoints == [QC_EP]


def test_two_methods_with_one_name_are_rejected(queues):
    def qc_energy(x):  # noqa: F811 - the clash is the point
        return x

    with pytest.raises(ValueError, match="qc_energy"):
        build_globus_task_server(METHODS + [(qc_energy, QC_EXECUTOR)], queues, {QC_EXECUTOR: QC_EP, ML_EXECUTOR: ML_EP},
                                 client=FakeClient())


def test_endpoint_option_spelling():
    assert endpoint_option(QC_EXECUTOR) == "--globus-qc-endpoint"
    assert endpoint_option(ML_EXECUTOR) == "--globus-ml-endpoint"


# --- _setup against the SDK -------------------------------------------------------------------------------


def test_setup_opens_one_real_sdk_executor_per_endpoint(queues):
    """The real SDK Executor, with a mocked client: creating it contacts nothing until a task is submitted."""
    client = FakeClient()
    server = make_server(queues, client)
    server._setup()
    try:
        assert set(server.fx_execs) == {QC_EP, ML_EP}
        for endpoint, executor in server.fx_execs.items():
            assert isinstance(executor, Executor)
            assert str(executor.endpoint_id) == endpoint
            assert executor.client is client
            assert executor.batch_size == 128
    finally:
        server._cleanup()
    assert server.fx_execs == {}


def test_colmenas_own_setup_fails_with_this_sdk(queues):
    """Why the subclass exists: if this starts passing, Colmena was fixed upstream and the override can go."""
    server = make_server(queues)
    with pytest.raises(TypeError, match="funcx_client"):
        GlobusComputeTaskServer._setup(server)


def test_setup_uses_the_current_keywords(queues, fake_executor):
    client = FakeClient()
    server = make_server(queues, client)
    server._setup()
    assert sorted(e.endpoint_id for e in fake_executor.instances) == sorted([QC_EP, ML_EP])
    assert all(e.client is client for e in fake_executor.instances)


# --- submission and results -------------------------------------------------------------------------------


def test_submission_goes_to_the_methods_endpoint_and_the_result_comes_back(queues, fake_executor):
    server = make_server(queues)
    server._setup()
    qc_exec, ml_exec = executor_for(QC_EP), executor_for(ML_EP)

    topic, task = next_task(queues, "qc_energy", QC_TOPIC, 21)
    server.process_queue(topic, task)
    assert len(qc_exec.submitted) == 1 and ml_exec.submitted == []
    func_id, kwargs, future = qc_exec.submitted[0]
    assert func_id == server.registered_funcs["qc_energy"][0]
    assert kwargs == {"result": task}
    assert not math.isnan(task.timestamp.start_task_submission)

    with pytest.raises(TimeoutException):  # nothing goes back before the endpoint answers
        queues.get_result(QC_TOPIC, timeout=0.2)

    done = task.model_copy(deep=True)
    done.deserialize()
    done.set_result(42, runtime=0.1)
    done.serialize()
    future.set_result(done)  # runs the callback, as the SDK's result thread would

    result = queues.get_result(QC_TOPIC, timeout=5)
    assert result.task_id == task.task_id
    assert result.success is True
    assert result.value == 42
    assert result.method == "qc_energy"

    topic, task = next_task(queues, "ml_predict", ML_TOPIC, 1)
    server.process_queue(topic, task)
    assert len(ml_exec.submitted) == 1 and len(qc_exec.submitted) == 1
    assert ml_exec.submitted[0][0] == server.registered_funcs["ml_predict"][0]


def test_a_failed_task_comes_back_as_a_failure(queues, fake_executor):
    server = make_server(queues)
    server._setup()
    topic, task = next_task(queues, "qc_energy", QC_TOPIC, 1)
    server.process_queue(topic, task)
    executor_for(QC_EP).submitted[0][2].set_exception(RuntimeError("endpoint exploded"))

    result = queues.get_result(QC_TOPIC, timeout=5)
    assert result.success is False
    assert "endpoint exploded" in result.failure_info.exception


def test_a_lost_manager_is_resubmitted_to_the_same_endpoint(queues, fake_executor):
    server = make_server(queues)
    server._setup()
    topic, task = next_task(queues, "ml_predict", ML_TOPIC, 1)
    server.process_queue(topic, task)
    ml_exec = executor_for(ML_EP)
    ml_exec.submitted[0][2].set_exception(RuntimeError("Task failure due to loss of manager 42"))

    assert len(ml_exec.submitted) == 2  # Colmena's behaviour: resubmitted, not reported
    assert executor_for(QC_EP).submitted == []
    with pytest.raises(TimeoutException):
        queues.get_result(ML_TOPIC, timeout=0.2)


def test_a_future_cancelled_at_shutdown_sends_nothing(queues, fake_executor):
    server = make_server(queues)
    server._setup()
    topic, task = next_task(queues, "qc_energy", QC_TOPIC, 1)
    server.process_queue(topic, task)
    future = executor_for(QC_EP).submitted[0][2]
    with mock.patch.object(GlobusComputeTaskServer, "perform_callback") as colmena_callback:
        assert future.cancel()
    colmena_callback.assert_not_called()
    with pytest.raises(TimeoutException):
        queues.get_result(QC_TOPIC, timeout=0.2)


def test_the_server_loop_runs_tasks_on_both_endpoints_and_shuts_executors_down(queues, fake_executor):
    """Process.run (what start() runs in the child) driven in a thread, with an executor that runs the wrapper."""
    fake_executor.run_inline = True
    server = build_globus_task_server(METHODS, copy.copy(queues), {QC_EXECUTOR: QC_EP, ML_EXECUTOR: ML_EP},
                                      client=FakeClient(), timeout=30)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    queues.send_inputs(5, method="qc_energy", topic=QC_TOPIC)
    queues.send_inputs(5, method="ml_predict", topic=ML_TOPIC)
    qc_result = queues.get_result(QC_TOPIC, timeout=10)
    ml_result = queues.get_result(ML_TOPIC, timeout=10)
    queues.send_kill_signal()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert (qc_result.success, qc_result.value) == (True, 10)
    assert (ml_result.success, ml_result.value) == (True, 105)
    qc_exec, ml_exec = executor_for(QC_EP), executor_for(ML_EP)
    assert [s[0] for s in qc_exec.submitted] == [server.registered_funcs["qc_energy"][0]]
    assert [s[0] for s in ml_exec.submitted] == [server.registered_funcs["ml_predict"][0]]
    assert qc_exec.shutdown_calls == [{"wait": True, "cancel_futures": True}]
    assert ml_exec.shutdown_calls == [{"wait": True, "cancel_futures": True}]
