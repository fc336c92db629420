"""`python -m bench.tail`: where a default-mode PUT's time goes, stage by stage (issue 13).

Runs section (d)'s latency load (300 default-mode PUTs a second, open loop, after a warm-up)
against our gateway and worker as `python -m bench` starts them, except that each gateway
process notes, per update, when its request handed the update over, when the flush holding it
started (and whether it lingered 5x for a backlog), when Redis had it, and when the worker's
answer reached the process; the worker logs, per update, its task's time and the update's lag
from the flush (INFO, JSON). It prints each stage's p50, p99 and max, and for the requests of
the slowest 1 %, the stage that took longest.

`--burst 10` first drives ten seconds of async PUTs at full rate, as section (d) does before
its latency load, and waits until they are applied. `--variant NAME=VALUE,...` runs the
gateway and worker with settings of their own (say `CONTACTSYNC_PUBLISH_WAIT_LINGER_MS=2`);
`--runs 3` repeats the load. Meanwhile PostgreSQL's activity is sampled every 20 ms (a
checkpoint writing, an autovacuum worker in this database, what its client backends wait on),
and what was seen while the slowest 1 % were in flight is printed beside how often it was seen
at all. The notes cost each
request a few microseconds and a write(2); they are for finding the tail, not a figure to
quote against section (d)'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import load, services
from bench.pg_activity import ActivitySampler, Backend
from contactsync.settings import Settings

TRACE_DIR = "BENCH_TRACE_DIR"


def _trace(directory: str) -> None:
    """Note each update's stages in this gateway process, to a file of its own."""
    from api_gateway.publisher import Publisher
    from api_gateway.waiter import ResultWaiter

    # Open for the life of the process; line-buffered, so each note is on disk at once.
    out = Path(directory, f"gateway-{os.getpid()}.jsonl").open("a", buffering=1)  # noqa: SIM115
    add, flush, resolve = Publisher._add, Publisher._flush, ResultWaiter._resolve

    def note(kind: str, **fields: Any) -> None:
        out.write(json.dumps({"k": kind, "t": time.time(), **fields}) + "\n")

    def traced_add(self: Publisher, submission: Any) -> Any:
        note("submit", id=submission.update_id)
        return add(self, submission)

    async def traced_flush(self: Publisher) -> None:
        ids = [s.update_id for s, _ in self._pending[: self._max_batch * 4]]
        note("flush", ids=ids, backlogged=self._backlogged())
        await flush(self)
        note("queued", ids=ids)

    def traced_resolve(self: ResultWaiter, data: bytes) -> None:
        note("answer", ids=[item["update_id"] for item in json.loads(data)])
        resolve(self, data)

    Publisher._add = traced_add  # type: ignore[method-assign]
    Publisher._flush = traced_flush  # type: ignore[method-assign]
    ResultWaiter._resolve = traced_resolve  # type: ignore[method-assign]


def create_app() -> Any:
    """The gateway's application, its stages noted (the launcher below names this factory)."""
    from api_gateway.app import create_app as create_gateway

    _trace(os.environ[TRACE_DIR])
    return create_gateway()


def _serve(argv: list[str]) -> int:
    """`contactsync gateway` itself, with only the application factory swapped."""
    from api_gateway import processes
    from cli import services as cli_services

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    args.host = "127.0.0.1"
    serve = processes.serve

    def serve_traced(config: dict[str, object], workers: int, **kwargs: float) -> int:
        return serve({**config, "app": "bench.tail:create_app"}, workers, **kwargs)

    processes.serve = serve_traced  # type: ignore[assignment]
    return cli_services.gateway(args)


def _labels(backends: list[Backend]) -> set[str]:
    """What one sample of PostgreSQL says that could hold a request up."""
    labels: set[str] = set()
    for b in backends:
        if b.kind == "checkpointer" and b.wait != "CheckpointerMain":
            labels.add(f"checkpointer {b.wait or 'on CPU'}")
        elif b.kind == "autovacuum worker" and b.ours:
            labels.add("autovacuum in this database")
        elif b.kind == "client backend" and b.ours and b.state == "active":
            labels.add(f"a backend waiting on {b.wait_type}:{b.wait}" if b.wait
                       else "a backend on CPU")
            labels.add(f"  running: {b.query[:60]}")
        elif b.kind == "client backend" and b.ours and b.state == "idle in transaction":
            labels.add("a backend idle in transaction")
    return labels


def _report_activity(
    sampler: ActivitySampler, windows: list[tuple[float, float]], since: float
) -> None:
    """Print how often each label was seen during `windows`, beside since `since`."""
    run = [_labels(backends) for t, backends in sampler.samples if t >= since]
    inside = [_labels(backends) for t, backends in sampler.samples if t >= since and any(
        start <= t <= end for start, end in windows)]
    if not run or not inside:
        print("  PostgreSQL sampled: too few samples")
        return
    seen = Counter(label for labels in inside for label in labels)
    overall = Counter(label for labels in run for label in labels)
    print(f"  PostgreSQL while the slowest 1 % were in flight ({len(inside)} samples; "
          f"in the whole run, {len(run)}):")
    for label, count in seen.most_common(12):
        print(f"    {label:64s} {100 * count / len(inside):5.1f} %  "
              f"(whole run {100 * overall[label] / len(run):5.1f} %)")


def _quantiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    at = [values[min(len(values) - 1, int(len(values) * q))] for q in (0.5, 0.99)]
    return f"p50 {at[0]:6.1f}  p99 {at[1]:6.1f}  max {values[-1]:6.1f}"


def _stages(trace_dir: Path, worker_log: Path, since: float) -> dict[str, dict[str, float]]:
    """Return, per update id noted after `since`, each stage's milliseconds."""
    submit: dict[str, float] = {}
    flushed: dict[str, tuple[float, bool]] = {}
    queued: dict[str, float] = {}
    answered: dict[str, float] = {}
    for path in trace_dir.glob("gateway-*.jsonl"):
        for line in path.read_text().splitlines():
            note = json.loads(line)
            if note["k"] == "submit":
                submit[note["id"]] = note["t"]
            elif note["k"] == "flush":
                flushed.update((i, (note["t"], note["backlogged"])) for i in note["ids"])
            elif note["k"] == "queued":
                queued.update((i, note["t"]) for i in note["ids"])
            else:
                answered.update((i, note["t"]) for i in note["ids"])
    worker: dict[str, tuple[float, float]] = {}
    for line in worker_log.read_text(errors="replace").splitlines():
        if '"update finished"' in line:
            entry = json.loads(line)
            worker[entry["update_id"]] = (entry["lag_ms"], entry["apply_ms"])
    stages: dict[str, dict[str, float]] = {}
    for update_id, t in submit.items():
        if t < since or update_id not in answered or update_id not in worker:
            continue
        flush_at, backlogged = flushed[update_id]
        lag, task = worker[update_id]
        in_redis = (queued[update_id] - flush_at) * 1000
        stages[update_id] = {
            "linger": (flush_at - t) * 1000,
            "lingered 5x (backlog)": 1.0 if backlogged else 0.0,
            "flush round trip": in_redis,
            "queued, until a worker's task started": max(0.0, lag - task - in_redis),
            "worker task (whole message)": task,
            "answer reaching the gateway": (answered[update_id] - flush_at) * 1000 - lag,
            "in the gateway, handed over to answered": (answered[update_id] - t) * 1000,
            "_from": t,
            "_until": answered[update_id],
        }
    return stages


def _report(stages: dict[str, dict[str, float]], sampler: ActivitySampler, since: float) -> None:
    if not stages:
        print("  no update traced")
        return
    names = [n for n in next(iter(stages.values()))
             if n != "lingered 5x (backlog)" and not n.startswith("_")]
    for name in names:
        print(f"  {name:42s} {_quantiles([s[name] for s in stages.values()])}")
    lingered = sum(s["lingered 5x (backlog)"] for s in stages.values())
    print(f"  flushes lingering 5x for a backlog: {lingered:.0f} of {len(stages)} updates")
    total = sorted(stages.values(), key=lambda s: s["in the gateway, handed over to answered"])
    slow = total[int(len(total) * 0.99):]
    worst = Counter(max((n for n in names[:-1]), key=lambda n, s=s: s[n]) for s in slow)
    print(f"  slowest 1 % ({len(slow)} updates), longest stage: " + ", ".join(
        f"{name} {count}" for name, count in worst.most_common()))
    backlog = sum(s["lingered 5x (backlog)"] for s in slow)
    print(f"  of which lingered 5x for a backlog: {backlog:.0f}")
    _report_activity(sampler, [(s["_from"], s["_until"]) for s in slow], since)


def _burst(url: str, key: str, contacts: int, seconds: float, settings: Settings) -> None:
    from bench.runs import _applied, _wait_until

    before = _applied(settings)
    result = load.wrk(url, key, contacts, seconds, first=before)
    _wait_until(lambda: _applied(settings) >= before + result.requests - result.non_2xx,
                "the burst")
    print(f"burst: {result.requests} async PUTs in {seconds:.0f} s, all applied", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tail", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--burst", type=float, default=0,
                        help="seconds of full-rate async PUTs before each run, as in (d)")
    parser.add_argument("--variant", default="", help="NAME=VALUE,... for gateway and worker")
    args = parser.parse_args(argv)
    extra = dict(e.split("=", 1) for e in args.variant.split(",") if e)
    with tempfile.TemporaryDirectory(prefix="bench-tail-") as tmp, \
            services.private_redis() as redis, \
            services.fresh_database("postgresql", Path(tmp)) as url:
        workdir = Path(tmp)
        settings = Settings(database_url=url, redis_url=redis)
        key, ids = services.seed(settings, 1000)
        trace_dir = workdir / "trace"
        trace_dir.mkdir()
        env = services.env_for(settings, **{TRACE_DIR: str(trace_dir)}, **extra)
        port = services.free_port()
        gateway = services.start("gateway", [sys.executable, "-m", "bench.tail", "--serve",
                                             "--port", str(port), "--workers",
                                             str(args.processes)], env, workdir)
        services.wait_for(lambda: services.socket_pids(port, "listening"), "gateway")
        services.wait_listening(port, args.processes, "gateway")
        worker_env = {**env, "CONTACTSYNC_LOG_LEVEL": "INFO", "CONTACTSYNC_LOG_FORMAT": "json"}
        worker = services.start_worker(worker_env, args.concurrency, workdir)
        requests = load.put_request(key, len(ids))
        sampler = ActivitySampler(url, url.rsplit("/", 1)[1])
        try:
            # A worker starting on a busy machine takes seconds: load before it consumes would
            # measure its start, not the tail.
            services.wait_for(lambda: httpx.put(
                f"http://127.0.0.1:{port}/external/v1/contacts/{ids[0]}", json={"company": "w"},
                headers={"X-API-Key": key}, timeout=30).status_code == 200, "worker", 300)
            for run in range(args.runs):
                if args.burst:
                    _burst(f"http://127.0.0.1:{port}", key, len(ids), args.burst, settings)
                since = time.time() + min(2, args.seconds)  # after the warm-up
                result = load.open_loop(port, args.rate, args.seconds, requests,
                                        warmup=min(2, args.seconds))
                print(f"run {run + 1}: {args.rate:.0f} default-mode PUTs/s, client p50 "
                      f"{result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms; statuses "
                      f"{dict(sorted(result.statuses.items()))}; generator late by "
                      f"{result.late_p99_ms:.1f} ms at p99", flush=True)
                time.sleep(0.5)  # the last answers' notes reach their files
                _report(_stages(trace_dir, workdir / "worker.log", since), sampler, since)
        finally:
            sampler.stop()
            worker.stop()
            gateway.stop()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        raise SystemExit(_serve(sys.argv[2:]))
    raise SystemExit(main())
