"""Celery task wrappers: parse the payload, call the logic, commit, decide retry."""
