"""The backlog sweep's hold on Redis: one ZINTERSTORE of an account's whole set against the
page-at-a-time check of tasks/account_backlog.py, on the same sets, in one run.

`python -m bench.backlog_sweep [--waiting 100000] [--rounds 3]` starts a private Redis, fills
one account's set and the pending set with `waiting` updates (a tenth of them finished, so
absent from the pending set), and times each way of dropping the finished ones: the longest
single Redis call (how long every other client, the gateways' accepts among them, waits
behind it) and the whole sweep. Figures are medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from redis import Redis

from bench.services import private_redis
from contactsync import names
from tasks import account_backlog

ACCOUNT = "acc_bench"


def _fill(redis: Redis, waiting: int) -> None:
    redis.flushdb()
    key = names.account_pending_key(ACCOUNT)
    for start in range(0, waiting, 10_000):
        page = {f"upd_{n:012d}": n for n in range(start, min(start + 10_000, waiting))}
        redis.zadd(key, page)
        redis.zadd(names.PENDING_KEY, {m: s for m, s in page.items() if s % 10})
    redis.sadd(names.BACKLOG_ACCOUNTS_KEY, ACCOUNT)


def _intersect(redis: Redis) -> None:
    """The sweep before session 9: one ZINTERSTORE."""
    key = names.account_pending_key(ACCOUNT)
    redis.zinterstore(key, {key: 1, names.PENDING_KEY: 0})


def _time(redis: Redis, sweep: Callable[[Redis], object]) -> tuple[float, float]:
    """Return (the longest Redis command, the whole sweep) in ms."""
    redis.slowlog_reset()
    redis.config_set("slowlog-log-slower-than", 0)
    started = time.perf_counter()
    sweep(redis)
    whole = time.perf_counter() - started
    longest = max(entry["duration"] for entry in redis.slowlog_get(100_000))  # microseconds
    redis.config_set("slowlog-log-slower-than", 10_000)
    return longest / 1000, whole * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with private_redis() as url:
        redis = Redis.from_url(url)
        redis.config_set("slowlog-max-len", 100_000)
        figures: dict[str, list[tuple[float, float]]] = {"intersect": [], "pages": []}
        for _ in range(args.rounds):
            for name, sweep in (("intersect", _intersect), ("pages", account_backlog.reconcile)):
                _fill(redis, args.waiting)
                figures[name].append(_time(redis, sweep))
                left = redis.zcard(names.account_pending_key(ACCOUNT))
                assert left == args.waiting - args.waiting // 10, (name, left)
        redis.close()
    print(f"| sweep of {args.waiting:,} waiting updates | longest Redis command | whole sweep |")
    print("|---|---|---|")
    for name, label in (("intersect", "one ZINTERSTORE (before)"),
                        ("pages", f"pages of {account_backlog.PAGE} (now)")):
        longest = statistics.median(f[0] for f in figures[name])
        whole = statistics.median(f[1] for f in figures[name])
        print(f"| {label} | {longest:.1f} ms | {whole:.1f} ms |")


if __name__ == "__main__":
    main()
