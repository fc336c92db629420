"""Our gateway with its PUT served by FastAPI's routing (`python -m bench.variants plain`).

The same application as `contactsync gateway`, launched the same way (`cli/services.py`),
minus the entry point of `api_gateway/edge.py` that sends the contact PUT past FastAPI: what
the bypass is worth is what this variant loses against `ours`.
"""

from __future__ import annotations

from fastapi import FastAPI

from api_gateway.app import create_app as create_gateway


def create_app() -> FastAPI:
    return create_gateway().api


if __name__ == "__main__":
    import argparse

    from api_gateway import processes
    from cli import services

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    args.host = "127.0.0.1"
    serve = processes.serve

    def serve_plain(config: dict[str, object], workers: int, **kwargs: float) -> int:
        return serve({**config, "app": "bench.plain_gateway:create_app"}, workers, **kwargs)

    # `contactsync gateway` itself (its settings, metrics directory, uvicorn options), with
    # only the application it names swapped.
    processes.serve = serve_plain  # type: ignore[assignment]
    raise SystemExit(services.gateway(args))
