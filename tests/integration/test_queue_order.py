"""The order a real worker takes its queues' messages in: single updates first, yet a bulk
message waiting beside many single ones is not left until they are all done."""

from __future__ import annotations

from contactsync import names
from contactsync.queue.wire import queue_list_key, task_message
from tests.conftest import Stack, make_contact, make_tenant
from tests.integration.apply_support import ORIGIN, accepted, records
from tests.support import wait_until
from worker.queue_order import RUN, SinglesFirst

SINGLES = 60


def test_the_cycle_asks_bulk_first_once_after_a_run_of_singles() -> None:
    cycle = SinglesFirst()
    cycle.update([names.UPDATES_QUEUE, names.BULK_QUEUE])
    asked = []
    for _ in range(RUN + 2):
        queues = cycle.consume(2)
        asked.append(queues[0])
        cycle.rotate(queues[0])  # both queues hold messages: the first listed gives one
    assert asked == [names.UPDATES_QUEUE] * RUN + [names.BULK_QUEUE, names.UPDATES_QUEUE]


def test_single_updates_come_first_whatever_order_the_queues_were_given_in() -> None:
    cycle = SinglesFirst()
    cycle.update([names.BULK_QUEUE, names.UPDATES_QUEUE])
    assert cycle.consume(2) == [names.UPDATES_QUEUE, names.BULK_QUEUE]


def test_a_bulk_message_waiting_beside_many_singles_is_taken_early(stack: Stack) -> None:
    tenant = make_tenant(stack.db, "acme")
    single_contact = make_contact(stack.db, tenant.account_id)
    bulk_contact = make_contact(stack.db, tenant.account_id)
    singles = [accepted(tenant.account_id, single_contact, {"position": f"P{n}"})
               for n in range(SINGLES)]
    bulk = accepted(tenant.account_id, bulk_contact, {"company": "Bulk"},
                    queue=names.BULK_QUEUE)
    # All at once, the bulk message last: the worker finds both queues full.
    with stack.redis.pipeline(transaction=True) as pipe:
        for update in [*singles, bulk]:
            pipe.set(names.update_body_key(update.update_id), update.to_json())
            pipe.lpush(queue_list_key(update.queue), task_message(update.queue, [update], ORIGIN))
        pipe.execute()
    ids = [u.update_id for u in [*singles, bulk]]
    done = wait_until(lambda: (found := records(stack.db, ids)) and len(found) == len(ids)
                      and found, timeout=30)
    order = sorted(ids, key=lambda i: (done[i].applied_at, i))
    # Taken in strict order, the bulk update would come after all sixty; here after a run of
    # singles, plus what the worker had already taken (its pool and prefetch).
    assert order.index(bulk.update_id) < SINGLES // 3, order.index(bulk.update_id)
