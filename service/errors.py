"""Domain errors of the service; the gRPC adapter maps each onto one status code."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of the errors the gRPC layer maps onto status codes."""


class InvalidInput(ServiceError):
    """Bad argument whatever the server's state (INVALID_ARGUMENT)."""


class NotFound(ServiceError):
    """An unknown key, identity, collection or version (NOT_FOUND)."""


class FailedPrecondition(ServiceError):
    """The server's state refuses the call, e.g. an index built with another model."""


class Overloaded(ServiceError):
    """A queue is full: retry later (RESOURCE_EXHAUSTED)."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work was done."""


class ClientGone(ServiceError):
    """The caller ended the call (cancelled it, or gRPC refused one of its messages) before
    the change was applied; nothing was. Its status is the caller's side's (CANCELLED or
    DEADLINE_EXCEEDED), which the gRPC adapter reads from the call."""


class Unavailable(ServiceError):
    """Shutting down or not loaded yet (UNAVAILABLE)."""


class Unauthenticated(ServiceError):
    """No API key, or one that is unknown or revoked."""


class PermissionDenied(ServiceError):
    """A valid API key used outside its collections or access level."""
