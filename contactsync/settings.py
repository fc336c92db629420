"""The one settings object: nothing else in the project reads the environment."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_FLOWER_AUTH = "admin:contactsync"


class Settings(BaseSettings):
    """Configuration, from `CONTACTSYNC_*` variables plus `DATABASE_URL` / `REDIS_URL`."""

    model_config = SettingsConfigDict(env_prefix="CONTACTSYNC_", extra="ignore")

    environment: str = Field(default="development", description="development or production")
    database_url: str = Field(
        default="sqlite:///contactsync.db",
        validation_alias=AliasChoices("DATABASE_URL", "CONTACTSYNC_DATABASE_URL"),
        description="SQLAlchemy URL; SQLite file by default, postgresql+psycopg:// in production",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "CONTACTSYNC_REDIS_URL"),
        description="Redis: Celery broker, result channel, event stream, rate limits",
    )
    sync_wait_seconds: float = Field(
        default=5.0, ge=0, le=60, description="how long a default-mode PUT waits for the worker"
    )
    publish_linger_ms: float = Field(
        default=1.0, ge=0, le=100,
        description="at most how long the gateway gathers async updates into one queue message "
        "(it stops as soon as no more are arriving)",
    )
    publish_wait_linger_ms: float = Field(
        default=10.0, ge=0, le=100,
        description="the same, when a default-mode PUT (which waits for the worker) is among them",
    )
    publish_max_batch: int = Field(
        default=200, ge=1, le=1000, description="most updates in one queue message"
    )
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    key_cache_seconds: float = Field(
        default=2.0, ge=0, le=60, description="how long a gateway process trusts a key lookup"
    )
    rate_limit_per_second: int = Field(
        default=100, ge=1, description="per-key requests per second unless the key sets its own; "
        "bursts of twice as many are allowed",
    )
    max_backlog: int = Field(
        default=100_000, ge=1,
        description="above this many queued updates, new updates get 503 SERVICE_UNAVAILABLE",
    )
    max_account_backlog: int | None = Field(
        default=None, ge=1,
        description="above this many queued updates of one account, its new updates get 503 "
        "(unset: half of max_backlog)",
    )
    update_rate_limit_per_second: int = Field(
        default=1000, ge=1, description="per-key batch items per second unless the key sets "
        "its own; bursts of ten times as many (at least 1,000, a full batch)",
    )
    backlog_refresh_seconds: float = Field(
        default=0.2, gt=0, le=5,
        description="how often a gateway process re-reads the queue lengths behind max_backlog",
    )
    max_retries: int = Field(default=8, ge=0, description="transient-failure retries per update")
    retry_backoff_max_seconds: int = Field(default=60, ge=1)
    visibility_timeout_seconds: int = Field(
        default=300, ge=10,
        description="an unacknowledged message goes back to the queue after this long",
    )
    worker_heartbeat_seconds: float = Field(
        default=2.0, gt=0, le=60,
        description="how often a worker says it is alive, and looks for workers that are not",
    )
    worker_dead_after_seconds: float = Field(
        default=8.0, gt=0, le=600,
        description="a worker silent this long is dead: the messages it held go back to their "
        "queue at once (at least three heartbeats)",
    )
    worker_concurrency: int | None = Field(
        default=None, ge=1,
        description="pool processes per worker; unset: twice the CPUs (each spends much of a "
        "task waiting on PostgreSQL and Redis)",
    )
    relay_interval_seconds: float = Field(default=0.2, gt=0, le=10)
    relay_batch_size: int = Field(default=500, ge=1)
    relay_call_max_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024,
        description="most event bytes in one script call of the relay (a pass makes several)",
    )
    events_stream: str = "contactsync:events"
    events_stream_maxlen: int = Field(default=1_000_000, ge=1000)
    flower_basic_auth: str = Field(
        default=DEFAULT_FLOWER_AUTH, description="user:password for the Flower dashboard"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto: JSON lines unless stderr is a terminal"
    )
    worker_metrics_port: int = Field(
        default=9808, ge=0, le=65535,
        description="port of a worker's Prometheus metrics (0: not served); one per worker host",
    )
    worker_metrics_address: str = Field(
        default="127.0.0.1", description="address the worker's metrics port listens on"
    )
    graceful_shutdown_seconds: int = Field(
        default=30, ge=1, le=600,
        description="how long a stopping gateway lets requests in flight finish",
    )
    instance_name: str = Field(default_factory=socket.gethostname)
    api_url: str = Field(
        default="http://127.0.0.1:8000", description="the gateway `contactsync import` sends to"
    )
    api_key: SecretStr | None = Field(
        default=None, description="the API key `contactsync import` sends (a secret)"
    )
    webhook_secret_key: SecretStr | None = Field(
        default=None, min_length=32,
        description="the key that encrypts webhook signing secrets at rest (32 or more random "
        "characters); required in production, see docs/security.md",
    )
    webhook_secret_key_file: Path = Field(
        default=Path(".contactsync/webhook-secret-key"),
        description="development only, when webhook_secret_key is unset: the file that holds "
        "a random key, made on first use",
    )
    webhooks_allow_insecure: bool = Field(
        default=False,
        description="development and tests: accept http:// and private, loopback or link-local "
        "webhook URLs",
    )
    # Webhook delivery (contactsync/webhook_*.py, tasks/webhooks.py); durations are settings
    # so that tests can shrink them.
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="a delivery not answered 2xx within this fails"
    )
    webhook_retry_base_seconds: float = Field(
        default=5.0, gt=0, description="the first retry comes within this; each next one may "
        "wait twice as long"
    )
    webhook_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="the longest wait between two attempts"
    )
    webhook_retry_for_seconds: float = Field(
        default=86_400.0, gt=0, description="a delivery is retried this long after its first "
        "attempt, then marked failed"
    )
    webhook_disable_after_seconds: float = Field(
        default=3 * 86_400.0, gt=0, description="an endpoint whose deliveries fail this long "
        "(from the first that finally failed after its last success) is disabled"
    )
    webhook_batch_size: int = Field(
        default=200, ge=1, le=1000, description="most deliveries in one delivery task (one "
        "endpoint, distinct contacts, sent concurrently)"
    )
    webhook_connections: int = Field(
        default=8, ge=1, le=100, description="most HTTP connections a delivery worker process "
        "keeps (one task sends to one endpoint at a time): a batch goes out this many at once"
    )
    webhook_endpoint_max_tasks: int = Field(
        default=2, ge=1, description="most delivery tasks of one endpoint in flight at once: "
        "how many of the delivery workers' pool processes a slow endpoint can hold"
    )
    webhook_task_budget_seconds: float = Field(
        default=5.0, gt=0, description="a delivery task goes on with its endpoint's next due "
        "deliveries until it has run this long"
    )
    webhook_lease_seconds: float = Field(
        default=60.0, gt=0, description="a dispatched delivery not finished within this is "
        "dispatched again (its worker died); well above the timeout and the task budget"
    )
    webhook_dispatch_batch: int = Field(
        default=2000, ge=1, description="most deliveries one dispatcher pass hands out"
    )
    webhook_queue_max: int = Field(
        default=2000, ge=1, description="the dispatcher hands out nothing while this many "
        "delivery tasks wait in the webhooks queue (no delivery worker running, say)"
    )
    webhook_endpoints_cache_seconds: float = Field(
        default=1.0, ge=0, le=60, description="the longest the relay trusts its list of "
        "enabled endpoints; a change is seen at once, unless Redis could not be told of it "
        "(then within this)"
    )
    webhook_event_retention_days: float = Field(
        default=7.0, gt=0, description="events and finished deliveries are kept this long, "
        "for replay and the deliveries list"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("flower_basic_auth")
    @classmethod
    def _user_colon_password(cls, value: str) -> str:
        if ":" not in value or value.startswith(":") or value.endswith(":"):
            raise ValueError("must be user:password")
        return value

    @model_validator(mode="after")
    def _no_placeholder_secrets_in_production(self) -> Settings:
        if self.environment == "production" and self.flower_basic_auth == DEFAULT_FLOWER_AUTH:
            raise ValueError(
                "CONTACTSYNC_FLOWER_BASIC_AUTH must be set in production (not the default)"
            )
        if self.environment == "production" and self.webhook_secret_key is None:
            raise ValueError("CONTACTSYNC_WEBHOOK_SECRET_KEY must be set in production")
        if self.environment == "production" and self.webhooks_allow_insecure:
            raise ValueError("CONTACTSYNC_WEBHOOKS_ALLOW_INSECURE is for development only")
        return self

    @model_validator(mode="after")
    def _dead_after_several_heartbeats(self) -> Settings:
        # One late heartbeat (a busy host, a slow Redis) must not look like a death.
        if self.worker_dead_after_seconds < 3 * self.worker_heartbeat_seconds:
            raise ValueError(
                "CONTACTSYNC_WORKER_DEAD_AFTER_SECONDS must be at least three times "
                "CONTACTSYNC_WORKER_HEARTBEAT_SECONDS"
            )
        return self

    @model_validator(mode="after")
    def _webhook_lease_outlasts_a_task(self) -> Settings:
        # A lease that lapses while its task still sends would hand the same deliveries to a
        # second task: sent twice, and a contact's next event could overtake.
        if self.webhook_lease_seconds < self.webhook_task_budget_seconds + 2 * (
                self.webhook_timeout_seconds):
            raise ValueError(
                "CONTACTSYNC_WEBHOOK_LEASE_SECONDS must be at least the task budget plus twice "
                "the webhook timeout"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        """Return the SQLite file this configuration points at, if any."""
        if not self.is_sqlite:
            return None
        return Path(self.database_url.split(":///", 1)[1])


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once."""
    return Settings()
