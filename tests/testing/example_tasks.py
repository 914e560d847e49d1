"""The user task of docs/testing.md: a charge through a payment gateway that is sometimes down.

The gateway is this module's :data:`gateway`, a stand-in the test controls (a real app would inject
its client the same way). The task retries a ``GatewayDown`` with an exponential backoff from 30 s,
and the gateway takes at most 2 charges a second, fleet-wide.
"""

from __future__ import annotations

from pydantic import BaseModel

from sluice import TaskContext, task
from sluice.resilience import ExponentialBackoff, RetryPolicy


class Charge(BaseModel):
    customer: str
    cents: int


class GatewayDown(Exception):
    """The payment gateway did not answer."""


class Gateway:
    """A payment gateway stand-in: fails the next ``down`` calls, then records each charge."""

    def __init__(self) -> None:
        self.down = 0
        self.charged: list[tuple[str, int]] = []

    def charge(self, customer: str, cents: int) -> None:
        if self.down > 0:
            self.down -= 1
            raise GatewayDown("gateway timed out")
        self.charged.append((customer, cents))


gateway = Gateway()


@task(
    "billing.charge",
    queue="billing",
    rate_limit="2/s",
    retry=RetryPolicy(max_attempts=5, backoff=ExponentialBackoff(initial=30, cap=300, jitter="none")),
)
async def charge(p: Charge, ctx: TaskContext) -> None:
    gateway.charge(p.customer, p.cents)
