"""What the parts a server hosts (servicer registrars, the HTTP API) may use of that server.

A Protocol, so that they depend on this interface and not on ``service.server``, which imports
them to build its list of registrars (no import loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import grpc

    from service.auth import Authenticator
    from service.config import ServeConfig
    from service.core import SimilarityCore
    from service.metrics import Metrics


class HostServer(Protocol):
    """The imgsim server as its hosted parts see it (``service.server.Server`` is one)."""

    cfg: ServeConfig
    core: SimilarityCore | None  # None until the model and index are loaded
    authenticator: Authenticator | None  # None without --require-api-key
    metrics: Metrics
    port: int  # the gRPC port, once bound
    stop_hooks: list[Callable[[], None]]  # run by stop(), after the drain

    def stop(self, grace: float | None = None) -> None: ...


# A registrar adds one gRPC service to the server and returns its full name (for reflection
# and health).
ServicerRegistrar = Callable[["grpc.Server", HostServer], str]
