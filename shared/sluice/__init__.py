"""sluice: async tasks on RabbitMQ with global rate limits, retries, breakers and dedup on Redis.

The public API of the library. Resilience primitives live in :mod:`sluice.resilience`.
"""

from sluice.errors import SluiceError
from sluice.protocol import PROTOCOL_VERSION, TaskMessage
from sluice.publisher import Publisher, PublishReport
from sluice.settings import Settings
from sluice.tasks import Registry, Task, TaskContext, task
from sluice.throttle import Throttled
from sluice.topology import Topology

__all__ = [
    "PROTOCOL_VERSION",
    "PublishReport",
    "Publisher",
    "Registry",
    "Settings",
    "SluiceError",
    "Task",
    "TaskContext",
    "TaskMessage",
    "Throttled",
    "Topology",
    "task",
]
__version__ = "0.1.0"
