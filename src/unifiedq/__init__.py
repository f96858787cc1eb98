"""unifiedq: one typed queue API over memory, shared memory, Redis, RabbitMQ, Faktory and QUIC.

Open a queue with a URL and use the same verbs everywhere::

    import unifiedq

    with unifiedq.connect("memory://emails") as q:
        q.enqueue(b"hello")
        job = q.dequeue(timeout=1)
        q.ack(job)

Importing this package imports no driver; drivers load on first use of their scheme.
"""

from ._base import AsyncQueueBase, QueueBase
from ._capabilities import Capability
from ._connect import connect, connect_async
from ._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BodyTooLarge,
    ConfigurationError,
    DriverNotFound,
    DriverUnavailable,
    DuplicateJob,
    InvalidArgument,
    InvalidBody,
    InvalidURL,
    JobError,
    JobNotLeased,
    ProtocolError,
    QueueClosed,
    QueueFull,
    QueueTimeout,
    SerializationError,
    UnifiedQError,
    UnsupportedOperation,
    WrongQueue,
)
from ._job import PRIORITY_MAX, PRIORITY_MIN, EnqueueRequest, Job
from ._protocol import AsyncQueue, Queue
from ._registry import DriverSpec, available_drivers, register_driver
from ._url import URL, parse_options, parse_url

__version__ = "0.1.0"

__all__ = [
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "URL",
    "AsyncQueue",
    "AsyncQueueBase",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BodyTooLarge",
    "Capability",
    "ConfigurationError",
    "DriverNotFound",
    "DriverSpec",
    "DriverUnavailable",
    "DuplicateJob",
    "EnqueueRequest",
    "InvalidArgument",
    "InvalidBody",
    "InvalidURL",
    "Job",
    "JobError",
    "JobNotLeased",
    "ProtocolError",
    "Queue",
    "QueueBase",
    "QueueClosed",
    "QueueFull",
    "QueueTimeout",
    "SerializationError",
    "UnifiedQError",
    "UnsupportedOperation",
    "WrongQueue",
    "__version__",
    "available_drivers",
    "connect",
    "connect_async",
    "parse_options",
    "parse_url",
    "register_driver",
]
