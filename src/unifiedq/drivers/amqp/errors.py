"""Which kombu/py-amqp/socket errors mean a lost connection, and their unifiedq errors.

:func:`translate` is the one place the driver maps a library error to the unifiedq tree.
"""

from __future__ import annotations

import ssl

import amqp.exceptions as amqp_exc

from ..._errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendTimeout,
    ConfigurationError,
)

__all__ = ["CONN_ERRORS", "QueueDeclarationMismatch", "retryable", "translate"]


class QueueDeclarationMismatch(ConfigurationError, BackendError):
    """The queue exists with other arguments than this handle declares it with.

    RabbitMQ answers ``PRECONDITION_FAILED`` (e.g. ``inequivalent arg 'x-queue-type'``) when
    a queue is declared with arguments that differ from those it was created with: another
    ``queue_type``, ``maxsize`` or (quorum queues) ``max_attempts``. Every handle of a queue
    must pass the same ones, or the queue must be deleted and declared again.
    """


#: Errors after which the connection is unusable and a new one may succeed.
CONN_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes socket.timeout/TimeoutError from a failed write or connect
    amqp_exc.RecoverableConnectionError,
    amqp_exc.IrrecoverableConnectionError,
)

def translate(exc: BaseException, what: str) -> BaseException:
    """Map a kombu/py-amqp/socket error to the unifiedq error tree (the one place we do)."""
    # Only a declaration's refusal: an ack of an unknown delivery tag is a 406 too.
    if isinstance(exc, amqp_exc.PreconditionFailed) and " arg " in str(exc):
        return QueueDeclarationMismatch(
            f"{what}: the broker refused our declaration ({exc}); the queue exists with other "
            "arguments: open every handle of it with the same queue_type, maxsize and (quorum "
            "queues) max_attempts, or delete the queue first")
    if isinstance(exc, amqp_exc.AccessRefused):
        return AuthenticationError(f"{what}: the broker refused our credentials ({exc})")
    if isinstance(exc, amqp_exc.NotAllowed):
        return AuthenticationError(f"{what}: the broker does not allow this ({exc}); "
                                   "check the virtual host and the user's permissions")
    if isinstance(exc, ssl.SSLCertVerificationError):
        # The broker failed to authenticate itself (as the faktory driver reports it too).
        return AuthenticationError(
            f"{what}: TLS certificate verification failed ({exc.verify_message}); "
            "set ca_file to the CA that signed the broker's certificate"
        )
    if isinstance(exc, amqp_exc.IrrecoverableConnectionError):
        return BackendError(f"{what}: the broker closed the connection because of what it "
                            f"was sent ({type(exc).__name__}: {exc}); not retried")
    if isinstance(exc, TimeoutError):
        return BackendTimeout(f"{what}: no answer from the broker in time ({exc})")
    if isinstance(exc, CONN_ERRORS):
        return BackendConnectionError(f"{what}: connection to the broker failed or was lost "
                                      f"({type(exc).__name__}: {exc})")
    return BackendError(f"{what}: {type(exc).__name__}: {exc}")


def retryable(exc: BaseException) -> bool:
    """Whether a new connection may succeed where ``exc`` failed.

    Not after a stall (``TimeoutError``: a new connection would stall too), a refused
    certificate, or a hard connection error (``FRAME_ERROR``, ``SYNTAX_ERROR``,
    ``COMMAND_INVALID``, ``UNEXPECTED_FRAME``, ``NOT_ALLOWED``, ...): the broker closed the
    connection because of what we sent, and sending it again would only repeat that.
    ``CONNECTION_FORCED`` (an operator or a broker shutdown) and lost sockets are retried.
    """
    return isinstance(exc, CONN_ERRORS) and not isinstance(
        exc, TimeoutError | amqp_exc.IrrecoverableConnectionError | ssl.SSLCertVerificationError
    )
