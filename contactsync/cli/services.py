"""Long-running commands: gateway, worker, flower, and `up`, which runs them all."""

from __future__ import annotations

import argparse
import os

from contactsync import names
from contactsync.settings import get_settings


def gateway(args: argparse.Namespace) -> int:
    import uvicorn

    settings = get_settings()
    uvicorn.run(
        "api_gateway.app:create_app", factory=True, host=args.host, port=args.port,
        workers=args.workers, log_level=settings.log_level.lower(), access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    from worker.app import app

    settings = get_settings()
    queues = args.queues or f"{names.UPDATES_QUEUE},{names.BULK_QUEUE}"
    argv = ["worker", "--queues", queues, "--task-events", "--loglevel", settings.log_level]
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
    app.start(["flower", f"--port={args.port}", f"--address={args.address}"])
    return 0


def up(args: argparse.Namespace) -> int:
    from contactsync.cli.up import run

    return run(gateway_port=args.port, flower_port=args.flower_port)
