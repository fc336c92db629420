"""Long-running commands: gateway, worker, flower, and `up`, which runs them all."""

from __future__ import annotations

import argparse
import os
import shutil

from contactsync import names
from contactsync.logs import configure
from contactsync.metrics_dir import make_metrics_dir
from contactsync.settings import get_settings

FLOWER_TASKS_COLUMNS = "name,state,args,received,started,runtime,retries,worker"


def gateway(args: argparse.Namespace) -> int:
    import uvicorn

    from api_gateway import processes

    settings = get_settings()
    configure(settings)
    metrics_dir = None
    if args.workers > 1:
        # Each process counts its own requests: prometheus-client's multiprocess mode has them
        # write to files here, which any process's /metrics sums. The processes are spawned
        # (fresh interpreters), so they all start in that mode.
        metrics_dir = make_metrics_dir("gateway")
    config = {
        "app": "api_gateway.app:create_app", "factory": True, "host": args.host,
        "port": args.port, "log_level": settings.log_level.lower(), "access_log": False,
        # Ours, not uvicorn's: its records go to contactsync's handler (JSON or text).
        "log_config": None,
        # On SIGTERM, requests in flight (a default-mode PUT waiting for its worker included)
        # get their answers before the process exits.
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
    }
    try:
        if args.workers > 1 and processes.reuse_port_available():
            return processes.serve(
                config, args.workers, stop_timeout=settings.graceful_shutdown_seconds + 5
            )
        uvicorn.run(**config, workers=args.workers)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def worker(args: argparse.Namespace) -> int:
    from worker.app import app

    settings = get_settings()
    # Webhook deliveries run on workers of their own (`--queues webhooks`): a pool process
    # waiting on a slow receiver must never be one the updates need.
    queues = args.queues or f"{names.UPDATES_QUEUE},{names.BULK_QUEUE}"
    argv = ["worker", "--queues", queues, "--task-events", "--loglevel", settings.log_level]
    if names.WEBHOOKS_QUEUE in queues.split(","):
        # A delivery task may wait 10 s on a receiver: a worker takes a message only when a
        # pool process is free, so none waits behind a slow endpoint's task in a busy worker
        # while another worker is idle.
        argv.append("--disable-prefetch")
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    app.worker_main(argv)
    return 0


def flower(args: argparse.Namespace) -> int:
    from worker.app import app

    settings = get_settings()
    # Flower reads FLOWER_* variables; passing the credentials this way keeps them out of `ps`.
    os.environ["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    os.environ.setdefault("FLOWER_PURGE_OFFLINE_WORKERS", "60")
    # The args column holds each task's argsrepr: contact ids, update ids and the changed
    # fields' names (never their values), which is what an operator looks for.
    os.environ.setdefault("FLOWER_TASKS_COLUMNS", FLOWER_TASKS_COLUMNS)
    app.start(["flower", f"--port={args.port}", f"--address={args.address}"])
    return 0


def up(args: argparse.Namespace) -> int:
    from cli.up import run

    return run(gateway_port=args.port, flower_port=args.flower_port)
