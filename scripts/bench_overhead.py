#!/usr/bin/env python
"""Steering overhead: no-op tasks through the campaign's own stack versus a bare ProcessPoolExecutor.

The stack is exactly what ``run.py`` uses: a managed ``redis-server``, Colmena's Redis queues, a Parsl task
server on the ``local`` site, and a thinker built from Colmena's agent decorators that keeps ``--in-flight``
tasks going. The baseline runs the same no-op function in a ``concurrent.futures.ProcessPoolExecutor`` with
the same number of workers and tasks in flight. Prints both, then one JSON line.

    python scripts/bench_overhead.py --tasks 2000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from colmena.models import Result  # noqa: E402
from colmena.task_server import ParslTaskServer  # noqa: E402
from colmena.thinker import BaseThinker, ResourceCounter, result_processor, task_submitter  # noqa: E402

from configs.services.lifeline import become_subreaper, stop_descendants  # noqa: E402
from configs.services.queues import AuthRedisQueues, ManagedRedis  # noqa: E402
from configs.sites.catalog import SITES, SiteOptions  # noqa: E402
from configs.sites.executors import QC_EXECUTOR  # noqa: E402
from methods.noop import noop  # noqa: E402
from store.results import TASK_LEGS  # noqa: E402
from thinkers.topics import DESIGN_TOPICS, QC_TOPIC  # noqa: E402


class NoopThinker(BaseThinker):
    """Keeps ``in_flight`` no-op tasks running until ``n_tasks`` have come back."""

    def __init__(self, queues, n_tasks: int, in_flight: int, payload: bytes):
        super().__init__(queues, ResourceCounter(in_flight, ["noop"]))
        self.rec.reallocate(None, "noop", in_flight)
        self.n_tasks, self.payload = n_tasks, payload
        self.sent = 0
        self.results: list[Result] = []

    @task_submitter(task_type="noop")
    def submit(self) -> None:
        if self.sent < self.n_tasks:
            self.sent += 1
            self.queues.send_inputs(self.payload, method="noop", topic=QC_TOPIC)

    @result_processor(topic=QC_TOPIC)
    def receive(self, result: Result) -> None:
        self.rec.release("noop", 1)
        self.results.append(result)
        if len(self.results) >= self.n_tasks:
            self.done.set()


def stats(round_trips: list[float], start: float, end: float, n: int) -> dict:
    ms = np.array(round_trips) * 1000
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "throughput_per_s": n / (end - start) if end > start else None}


def bench_stack(n_tasks: int, warmup: int, workers: int, in_flight: int, payload: bytes) -> dict:
    become_subreaper()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        redis_server = ManagedRedis(_free_port(), run_dir / "redis").start()
        server = None
        try:
            queues = AuthRedisQueues(DESIGN_TOPICS, hostname=redis_server.host, port=redis_server.port,
                                     password=redis_server.password, prefix="bench-overhead", keep_inputs=False)
            config = SITES["local"](run_dir, SiteOptions(qc_workers=workers, ml_workers=1))
            server = ParslTaskServer([(noop, {"executors": [QC_EXECUTOR]})], queues, config)
            server.start()
            thinker = NoopThinker(queues, n_tasks + warmup, in_flight, payload)
            thinker.start()
            thinker.join()
        finally:
            if server is not None:
                queues.send_kill_signal()
                server.join(timeout=60)
            stop_descendants(keep={redis_server.process.pid} if redis_server.process else set())
            redis_server.stop()
            stop_descendants()
    measured = sorted(thinker.results, key=lambda r: r.timestamp.result_received)[warmup:]
    trips = [r.timestamp.result_received - r.timestamp.created for r in measured]
    out = stats(trips, min(r.timestamp.created for r in measured), max(r.timestamp.result_received for r in measured),
                len(measured))
    out["stages_median_ms"] = stage_medians(measured)
    return out


STAGES = {key: (start, end) for key, (_, start, end) in TASK_LEGS.items()}


def stage_medians(results: list[Result]) -> dict[str, float]:
    """Median time of each leg of a task's round trip, from Colmena's timestamps (ms)."""
    medians = {}
    for name, (start, end) in STAGES.items():
        spans = [getattr(r.timestamp, end) - getattr(r.timestamp, start) for r in results]
        medians[name] = float(np.nanmedian(spans) * 1000)
    return medians


def bench_pool(n_tasks: int, warmup: int, workers: int, in_flight: int, payload: bytes) -> dict:
    trips, finished = [], []
    with ProcessPoolExecutor(workers) as pool:
        pending, submitted = {}, 0
        while len(finished) < n_tasks + warmup:
            while len(pending) < in_flight and submitted < n_tasks + warmup:
                pending[pool.submit(noop, payload)] = time.time()
                submitted += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                sent = pending.pop(future)
                finished.append((sent, time.time()))
    finished.sort(key=lambda item: item[1])
    measured = finished[warmup:]
    trips = [end - start for start, end in measured]
    return stats(trips, min(s for s, _ in measured), max(e for _, e in measured), len(measured))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="measured tasks (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=50, help="first tasks excluded (worker start-up)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=None, help="tasks in flight (default: --workers)")
    parser.add_argument("--payload-bytes", type=int, default=0, help="size of the input (and output) of each task")
    args = parser.parse_args()
    in_flight = args.in_flight or args.workers
    payload = b"x" * args.payload_bytes

    pool = bench_pool(args.tasks, args.warmup, args.workers, in_flight, payload)
    print(f"ProcessPoolExecutor: median {pool['median_ms']:.2f} ms, p90 {pool['p90_ms']:.2f} ms, "
          f"{pool['throughput_per_s']:.0f} tasks/s", flush=True)
    stack = bench_stack(args.tasks, args.warmup, args.workers, in_flight, payload)
    print(f"Redis + Colmena + Parsl: median {stack['median_ms']:.2f} ms, p90 {stack['p90_ms']:.2f} ms, "
          f"{stack['throughput_per_s']:.0f} tasks/s", flush=True)
    print("  legs (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in stack["stages_median_ms"].items()))
    ratio = stack["median_ms"] / pool["median_ms"]
    print(f"Overhead ratio (median round trip): {ratio:.1f}x", flush=True)
    print(json.dumps({
        "benchmark": "steering_overhead", "tasks": args.tasks, "workers": args.workers, "in_flight": in_flight,
        "payload_bytes": args.payload_bytes, "stack": stack, "process_pool": pool, "median_ratio": ratio,
        "throughput_ratio": pool["throughput_per_s"] / stack["throughput_per_s"],
        "machine": f"{platform.node()} {platform.machine()}",
    }))


if __name__ == "__main__":
    main()
