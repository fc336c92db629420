"""The straightforward design, section (d)'s baseline (issue 13): FastAPI -> `apply_async` ->
a Celery task doing one ORM update and one `XADD`.

Written plainly, the way a team new to Celery would build it, on purpose: an engine and
clients made at import, a key checked by a query per request, one task per update with
Celery's defaults, the event published right after the commit (a dual write our design avoids
with its outbox). It shares nothing of ours but the tables and the contacts, and its broker
is its own Redis database number (`bench.runs` gives it one), so its queue and keys never mix
with ours. `python -m bench --only d` runs it beside ours.
"""

QUEUE = "straightforward.updates"  # its Celery queue
EVENTS = "straightforward:events"  # the stream each applied update is announced on
