"""contactsync: apply contact updates from a queue, idempotently, with change events."""
