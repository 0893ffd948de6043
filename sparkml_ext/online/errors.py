"""What online publishing and serving refuse, apart from their modules so that the CLI can
name them without importing the serving stack."""

from __future__ import annotations


class PublishError(RuntimeError):
    """Nothing to publish from: no feature table, or not one this spec built."""


class ServeError(RuntimeError):
    """The server cannot start on this model or store (the reason says which and why)."""


class RequestError(ValueError):
    """A request the server refuses: `status` is the HTTP status, `errors` name the fields."""

    def __init__(self, status: int, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.status, self.errors = status, errors or []
