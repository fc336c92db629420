"""One error tree: client errors (mapped to HTTP once), retryable and permanent failures."""

from __future__ import annotations

from typing import Any


class ContactSyncError(Exception):
    """Root of every error the project raises on purpose."""


class ClientError(ContactSyncError):
    """A request the client must change: mapped to the HTTP error envelope in one place."""

    status_code = 400
    code = "VALIDATION_ERROR"

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class ValidationFailed(ClientError):
    status_code = 400
    code = "VALIDATION_ERROR"

    def __init__(self, fields: dict[str, str], message: str = "The request is not valid.") -> None:
        super().__init__(message, details={"fields": fields})
        self.fields = fields


class MissingApiKey(ClientError):
    status_code = 401
    code = "MISSING_API_KEY"


class InvalidApiKey(ClientError):
    status_code = 401
    code = "INVALID_API_KEY"


class InsufficientPermissions(ClientError):
    status_code = 403
    code = "INSUFFICIENT_PERMISSIONS"


class NotFound(ClientError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(ClientError):
    status_code = 409
    code = "CONFLICT"


class PayloadTooLarge(ClientError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ClientError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class IdempotencyKeyReused(ClientError):
    status_code = 422
    code = "IDEMPOTENCY_KEY_REUSED"


class RetryLater(ClientError):
    """An error that tells the client when to try again (`Retry-After`, and in the details)."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(
            message,
            details={"retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


class RateLimited(RetryLater):
    status_code = 429
    code = "RATE_LIMIT_EXCEEDED"


class ServiceUnavailable(RetryLater):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"


class ApplyFailure(ContactSyncError):
    """A failure while applying an update in a worker."""


class TransientFailure(ApplyFailure):
    """Worth retrying: a lost connection, a deadlock, a lock timeout."""
