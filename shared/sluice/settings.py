"""Settings, read once from the environment (prefix ``SLUICE_``) in each service's ``main``.

Nothing reads the environment at import time: build a :class:`Settings` where the program starts
and pass it down.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "mask_url"]

MiB = 1024 * 1024

# what a bearer token may contain (RFC 6750 b64token): anything else could not be sent in the header
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (each of a comma-separated list of URLs)."""
    if "," in url:
        return ",".join(mask_url(u.strip()) for u in url.split(",") if u.strip())
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Settings(BaseSettings):
    """Every knob of every sluice service. Environment variable = ``SLUICE_`` + the field name."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore", frozen=True)

    # brokers
    amqp_url: str = Field(
        "amqp://guest:guest@localhost:5672/",
        description="RabbitMQ URL, or several separated by commas (the nodes of a cluster): a process "
        "connects to the first that answers, in an order shuffled per connection, and moves on when one is lost",
    )
    redis_url: str = Field("redis://localhost:6379/0", description="Redis URL (with redis_cluster: any node)")
    redis_cluster: bool = Field(
        False, description="redis_url names a node of a Redis Cluster: clients are RedisCluster clients"
    )

    # topology
    prefix: str = Field(
        "sluice", pattern=r"^[A-Za-z0-9_\-]+$", description="prefix of every exchange and queue"
    )
    queue_type: Literal["quorum", "classic"] = Field("quorum", description="type of the work queues")
    default_queue: str = Field(
        "default", pattern=r"^[A-Za-z0-9_\-.]+$", description="queue for tasks that name none"
    )
    queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="work queues producers may create besides the default one and their tasks' queues "
        "(comma-separated); any other queue must already exist",
    )
    delivery_limit: int = Field(
        20, ge=1, description="quorum queues: deliveries before a message is dead-lettered as poison"
    )

    # messages
    max_message_bytes: int = Field(MiB, ge=1024, le=128 * MiB, description="size cap on a message body")

    # publishing
    publish_timeout: float = Field(10.0, gt=0, description="seconds to wait for a publisher confirm")
    publish_window: int = Field(1000, ge=1, description="publishes awaiting confirm at once")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to wait for a broker connection")

    # worker
    concurrency: int = Field(64, ge=1, description="tasks run at once by one worker process")
    prefetch: int = Field(256, ge=1, le=2000, description="unacked deliveries the broker sends ahead")
    grace_period: float = Field(30.0, ge=0, description="seconds in-flight tasks get to finish on shutdown")
    sync_threads: int = Field(16, ge=1, description="threads for plain (non-async) handlers")
    gc_threshold: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="the worker's garbage collector: its startup heap frozen (gc.freeze) and a young "
        "collection every this many allocations (Python's default: 700); 0 leaves the collector as it is",
    )
    pause_blocked: bool = Field(
        True,
        description="pause a queue's consumer while every task it carries is blocked (an open breaker, "
        "a frozen limit) instead of cycling its messages through the delay tiers (docs/policies.md)",
    )

    # HTTP services
    producer_host: str = Field("127.0.0.1", description="producer HTTP bind address")
    producer_port: int = Field(8000, ge=1, le=65535, description="producer HTTP port")
    metrics_host: str = Field("127.0.0.1", description="metrics HTTP bind address")
    metrics_port: int = Field(9108, ge=1, le=65535, description="metrics HTTP port")

    # producer HTTP API authentication (docs/producer.md, "Authentication")
    api_auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="bearer-token auth of the producer API: on, off, or auto (on when tokens are "
        "configured or the bind address is not loopback)",
    )
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bearer tokens the producer API accepts (comma-separated)"
    )
    api_token_file: Path | None = Field(
        None, description="a file of bearer tokens, one a line (for secrets mounts); adds to api_tokens"
    )

    # task handles (docs/tasks.md)
    track_all: bool = Field(
        False, description="record the state of every task, not only those declared or published with track"
    )
    track_ttl: float = Field(
        86400.0, gt=0, description="seconds a tracked task's record (and result) is kept after it ends"
    )
    track_running_after: float = Field(
        0.1,
        ge=0,
        le=60,
        description="seconds a tracked task runs before its record says running (a shorter task's end "
        "write stands for its start: one write, not two); 0: at once",
    )

    metrics_enabled: bool = Field(
        True,
        description="workers and producers send a telemetry snapshot to the metrics exchange every second",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("queues", "api_tokens", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [q.strip() for q in v.split(",") if q.strip()]
        return v

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, v: list[str]) -> list[str]:
        from sluice.topology import QUEUE_NAME

        bad = [q for q in v if not QUEUE_NAME.match(q)]
        if bad:
            raise ValueError(f"bad queue name {bad[0]!r}: use 1-200 of A-Z a-z 0-9 _ - .")
        return v

    @field_validator("api_tokens")
    @classmethod
    def _token_chars(cls, v: list[SecretStr]) -> list[SecretStr]:
        for i, token in enumerate(v, start=1):
            if not TOKEN_CHARS.fullmatch(token.get_secret_value()):
                # never echo the token itself: say which one
                raise ValueError(
                    f"token #{i} has characters a bearer token cannot carry (use A-Z a-z 0-9 -._~+/)"
                )
        return v

    @field_validator("api_token_file", mode="before")
    @classmethod
    def _no_empty_path(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, v: str) -> str:
        urls = [u.strip() for u in v.split(",")]
        if not all(urls):
            raise ValueError("an empty URL in the list: separate amqp:// URLs by single commas")
        if any(urlsplit(u).scheme not in ("amqp", "amqps") for u in urls):
            raise ValueError("must be an amqp:// or amqps:// URL (or several, separated by commas)")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if urlsplit(v).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return v

    @model_validator(mode="after")
    def _cluster_over_tcp(self) -> Settings:
        if self.redis_cluster:
            parts = urlsplit(self.redis_url)
            if parts.scheme == "unix":
                raise ValueError(
                    "redis_cluster needs a redis:// or rediss:// URL of a node, not a unix socket"
                )
            if parts.path.strip("/") not in ("", "0"):
                raise ValueError("a Redis Cluster has database 0 only: end redis_url with /0 or nothing")
        return self

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """The broker URLs of ``amqp_url``, in the order given (one, or the nodes of a cluster)."""
        return tuple(u.strip() for u in self.amqp_url.split(","))

    def masked(self) -> dict[str, Any]:
        """The effective settings, secrets masked, for display."""
        out = self.model_dump()
        out["amqp_url"] = mask_url(self.amqp_url)
        out["redis_url"] = mask_url(self.redis_url)
        out["api_tokens"] = ["***"] * len(self.api_tokens)
        out["api_token_file"] = None if self.api_token_file is None else str(self.api_token_file)
        return out
