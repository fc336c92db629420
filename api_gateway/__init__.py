"""The HTTP edge: authenticate, validate, enqueue, answer."""
