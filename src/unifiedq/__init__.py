"""unifiedq: one typed queue API over memory, shared memory, Redis, RabbitMQ, Faktory and QUIC.

Open a queue with a URL and use the same verbs everywhere::

    import unifiedq

    with unifiedq.connect("memory://emails") as q:
        q.enqueue(b"hello")
        job = q.dequeue(timeout=1)
        q.ack(job)

Importing this package imports no driver; drivers load on first use of their scheme. The
peak-load toolkit (``Worker``, ``FairQueue``, ``BoundedQueue``, ``TokenBucket``, ...) is
imported lazily too, on first access.
"""

from typing import TYPE_CHECKING, Any

from ._base import AsyncQueueBase, QueueBase
from ._capabilities import Capability
from ._connect import connect, connect_async
from ._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendFull,
    BackendTimeout,
    BodyTooLarge,
    ConfigurationError,
    DriverNotFound,
    DriverUnavailable,
    DuplicateJob,
    InvalidArgument,
    InvalidBody,
    InvalidURL,
    JobError,
    JobFailed,
    JobNotLeased,
    LimitExceeded,
    NotReplicated,
    ProtocolError,
    QueueClosed,
    QueueFull,
    QueueTimeout,
    ResultTimeout,
    SerializationError,
    UnifiedQError,
    UnsupportedOperation,
    WrongQueue,
)
from ._job import PRIORITY_MAX, PRIORITY_MIN, EnqueueRequest, Job
from ._protocol import AsyncQueue, Queue
from ._registry import DriverSpec, available_drivers, register_driver
from ._url import URL, parse_options, parse_url

if TYPE_CHECKING:
    from .bounded import AsyncBoundedQueue, BoundedQueue, ShedEvent
    from .codecs import JsonCodec, MsgpackCodec, TypedQueue
    from .fair import AsyncFairQueue, FairQueue
    from .limits import KeyedLimiter, TokenBucket
    from .scheduler import AsyncScheduler, Scheduler
    from .worker import AsyncWorker, Middleware, Retry, RetryLater, Router, SkipRetry, Worker

#: The package version, defined only here: pyproject.toml reads it at build time (the wheel's
#: metadata) and ``unifiedq --version`` prints it. A plain string literal, so that setuptools
#: can read it without importing the package.
__version__ = "0.1.0"

# Public names that live in submodules with heavier imports: loaded on first access.
_LAZY = {
    "Worker": "worker", "AsyncWorker": "worker", "Router": "worker", "Retry": "worker",
    "SkipRetry": "worker", "RetryLater": "worker", "Middleware": "worker",
    "FairQueue": "fair", "AsyncFairQueue": "fair",
    "BoundedQueue": "bounded", "AsyncBoundedQueue": "bounded", "ShedEvent": "bounded",
    "TokenBucket": "limits", "KeyedLimiter": "limits",
    "TypedQueue": "codecs", "JsonCodec": "codecs", "MsgpackCodec": "codecs",
    "Scheduler": "scheduler", "AsyncScheduler": "scheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'unifiedq' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"unifiedq.{module}"), name)
    globals()[name] = value
    return value

__all__ = [  # noqa: RUF022 - grouped: core names, then the lazily imported toolkit
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "URL",
    "AsyncQueue",
    "AsyncQueueBase",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendFull",
    "BackendTimeout",
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
    "JobFailed",
    "JobNotLeased",
    "LimitExceeded",
    "NotReplicated",
    "ProtocolError",
    "Queue",
    "QueueBase",
    "QueueClosed",
    "QueueFull",
    "QueueTimeout",
    "ResultTimeout",
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
    "AsyncBoundedQueue",
    "AsyncFairQueue",
    "AsyncScheduler",
    "AsyncWorker",
    "BoundedQueue",
    "FairQueue",
    "JsonCodec",
    "KeyedLimiter",
    "Middleware",
    "MsgpackCodec",
    "Retry",
    "RetryLater",
    "Router",
    "Scheduler",
    "ShedEvent",
    "SkipRetry",
    "TokenBucket",
    "TypedQueue",
    "Worker",
]
