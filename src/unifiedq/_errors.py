"""The exceptions unifiedq raises.

Every error derives from :class:`UnifiedQError`; most also derive from the builtin a
caller would naturally catch, so ``except ValueError`` keeps working::

    UnifiedQError
    ├── ConfigurationError(ValueError)
    │   └── InvalidURL                  bad URL, unknown scheme option, bad option value
    ├── DriverNotFound(LookupError)     no driver for the URL scheme ("did you mean ...")
    ├── DriverUnavailable(ImportError)  driver's dependencies missing; names the pip extra
    ├── UnsupportedOperation(NotImplementedError)   verb or option the driver lacks
    ├── InvalidArgument(ValueError)     bad verb argument (delay < 0, priority out of range, ...)
    │   ├── InvalidBody(TypeError)      body is not bytes
    │   └── LimitExceeded               a backend size/shape limit (frame, header table, ...)
    │       └── BodyTooLarge            body exceeds the driver's limit
    ├── QueueTimeout(TimeoutError)      a bounded wait ran out
    │   └── ResultTimeout               result() saw no result within its timeout
    ├── QueueFull                       bounded queue refused a job
    ├── QueueClosed(RuntimeError)       verb called after close()
    ├── JobError
    │   ├── WrongQueue(ValueError)      ack/nack of a job that came from another queue
    │   ├── JobNotLeased(LookupError)   ack/nack of a job already settled or whose lease expired
    │   ├── DuplicateJob(ValueError)    caller-chosen job id already exists
    │   └── JobFailed                   result() of a job that failed for good
    ├── SerializationError(ValueError)  a codec could not encode or decode a payload
    └── BackendError                    the backend failed; the library error is chained
        ├── BackendConnectionError(ConnectionError)
        │   └── BackendTimeout(TimeoutError)   no answer within the verb's deadline
        ├── BackendFull                 out of memory/disk; producers refused, consumers drain
        ├── NotReplicated               too few replicas confirmed an enqueue (min_replicas)
        ├── AuthenticationError(PermissionError)
        └── ProtocolError               the peer sent something we cannot understand

Drivers translate their library's exceptions in one place and chain them with ``from``.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BackendFull",
    "BackendTimeout",
    "BodyTooLarge",
    "ConfigurationError",
    "DriverNotFound",
    "DriverUnavailable",
    "DuplicateJob",
    "InvalidArgument",
    "InvalidBody",
    "InvalidURL",
    "JobError",
    "JobFailed",
    "JobNotLeased",
    "LimitExceeded",
    "NotReplicated",
    "ProtocolError",
    "QueueClosed",
    "QueueFull",
    "QueueTimeout",
    "ResultTimeout",
    "SerializationError",
    "UnifiedQError",
    "UnsupportedOperation",
    "WrongQueue",
]


class UnifiedQError(Exception):
    """Root of every exception raised by unifiedq."""


class ConfigurationError(UnifiedQError, ValueError):
    """A connection string or option is invalid."""


class InvalidURL(ConfigurationError):
    """The URL cannot be parsed, or one of its options is unknown or has a bad value."""


class DriverNotFound(UnifiedQError, LookupError):
    """No driver is registered for the URL scheme."""


class DriverUnavailable(UnifiedQError, ImportError):
    """The driver exists but its dependencies are not installed.

    Attributes:
        extra: The pip extra that installs the dependencies (``unifiedq[extra]``).
    """

    def __init__(self, message: str, *, extra: str | None = None) -> None:
        super().__init__(message)
        self.extra = extra


class UnsupportedOperation(UnifiedQError, NotImplementedError):
    """The driver cannot perform this verb or honour this option.

    Attributes:
        driver: The driver's name, e.g. ``"faktory"``.
        capability: The missing capability's name, e.g. ``"PEEK"``.
    """

    def __init__(self, message: str, *, driver: str = "", capability: str = "") -> None:
        super().__init__(message)
        self.driver = driver
        self.capability = capability


class InvalidArgument(UnifiedQError, ValueError):
    """An argument of a verb is invalid; nothing was sent to the backend."""


class InvalidBody(InvalidArgument, TypeError):
    """A job body is not ``bytes`` (or ``bytearray``/``memoryview``)."""


class LimitExceeded(InvalidArgument):
    """A job exceeds a size or shape limit of the backend; nothing was sent.

    Raised before the first byte goes out (e.g. AMQP's negotiated frame size for headers,
    Faktory's job size, Redis's bulk length, a QUIC frame, an shm slot), so bad input can
    never make a driver loop on reconnects.

    Attributes:
        limit: What the limit is, e.g. ``"frame_max"`` or ``"slot_size"``.
        size: The offending size: bytes, or jobs for ``limit="capacity"`` (0 if not a size).
        maximum: The limit, in the same unit as ``size`` (0 if not a size).
    """

    def __init__(self, message: str, *, limit: str = "", size: int = 0,
                 maximum: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.size = size
        self.maximum = maximum


class BodyTooLarge(LimitExceeded):
    """A job body is larger than the driver accepts."""


class QueueTimeout(UnifiedQError, TimeoutError):
    """A bounded wait (blocking enqueue on a full queue, a request) ran out of time."""


class ResultTimeout(QueueTimeout):
    """``result()`` saw no result for the job within its ``timeout``.

    The job may still be waiting or running, may have finished without a result (its
    handler returned None), or its result may have expired (see docs/results.md).

    Attributes:
        job_id: The id that was asked for.
    """

    def __init__(self, message: str = "", *, job_id: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id


class QueueFull(UnifiedQError):
    """A bounded queue is full and its overflow policy rejects the job."""


class QueueClosed(UnifiedQError, RuntimeError):
    """The queue object was closed; open a new one with ``connect()``."""


class JobError(UnifiedQError):
    """A problem with a specific job."""


class WrongQueue(JobError, ValueError):
    """A job was acked or nacked on a queue it was not dequeued from."""


class JobNotLeased(JobError, LookupError):
    """The job is not leased: already acked/nacked, or its lease expired and it was redelivered.

    Attributes:
        job_ids: The ids of the jobs concerned (several for ``ack_many()``, whose other jobs
            were acked).
    """

    def __init__(self, message: str = "", *, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.job_ids = job_ids


class DuplicateJob(JobError, ValueError):
    """A caller-chosen job id already exists in the queue."""


class JobFailed(JobError):
    """``result()`` of a job that failed for good (dead-lettered after its last attempt).

    Attributes:
        job_id: The job's id.
        error: The last error's text, as the Worker recorded it (e.g. ``"ValueError: bad"``).
    """

    def __init__(self, message: str = "", *, job_id: str = "", error: str = "") -> None:
        super().__init__(message or f"job {job_id!r} failed: {error}")
        self.job_id = job_id
        self.error = error


class SerializationError(UnifiedQError, ValueError):
    """A codec could not encode or decode a payload."""


class BackendError(UnifiedQError):
    """The backend reported an error; the original exception is chained as ``__cause__``."""


class BackendConnectionError(BackendError, ConnectionError):
    """The backend cannot be reached or the connection was lost."""


class BackendTimeout(BackendConnectionError, TimeoutError):
    """The backend did not answer within the verb's deadline (a frozen or unreachable host).

    The connection is dropped; an ``enqueue`` that timed out may or may not have taken
    effect (at-least-once: retry it with a ``job_id`` where the driver has CUSTOM_ID).
    """


class BackendFull(BackendError):
    """The backend refuses new jobs: it is out of memory or disk.

    E.g. Redis at ``maxmemory`` with ``noeviction``, or a RabbitMQ memory or disk alarm.
    Consumers can still dequeue, ack and nack, so the backlog drains.
    """


class NotReplicated(BackendError):
    """An enqueue reached the primary but too few replicas confirmed it in time.

    Raised by drivers asked for synchronous replication (redis ``min_replicas``). The job
    *is* queued on the primary and will run unless the primary fails before its replicas
    catch up; retrying with the same ``job_id`` (CUSTOM_ID) is safe: a duplicate raises
    DuplicateJob.

    Attributes:
        job_ids: The ids of the jobs of the call.
        replicas: How many replicas confirmed the write.
        wanted: How many were required.
    """

    def __init__(self, message: str = "", *, job_ids: tuple[str, ...] = (),
                 replicas: int = 0, wanted: int = 0) -> None:
        super().__init__(message)
        self.job_ids = job_ids
        self.replicas = replicas
        self.wanted = wanted


class AuthenticationError(BackendError, PermissionError):
    """The backend refused our credentials or certificate."""


class ProtocolError(BackendError):
    """The peer sent data that does not follow the expected protocol."""
