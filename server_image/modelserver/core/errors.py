"""Errors that carry their own HTTP status or their one-line reason for the termination log."""

from __future__ import annotations


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status the client gets."""

    status = 400
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequestError(RequestError):
    """Malformed or wrongly shaped input (400)."""

    status = 400


class NotFoundError(RequestError):
    """Unknown path or model name (404)."""

    status = 404


class MethodNotAllowedError(RequestError):
    """Known path, wrong HTTP method (405)."""

    status = 405


class PayloadTooLargeError(RequestError):
    """Body above the configured limit (413)."""

    status = 413


class HeadersTooLargeError(RequestError):
    """Request line and headers above the limit (431)."""

    status = 431


class UnavailableError(RequestError):
    """Not ready, or too many requests waiting (503); clients may retry after `retry_after` s."""

    status = 503
    retry_after = 1


class InternalError(RequestError):
    """The model failed on valid input (500)."""

    status = 500


class ModelLoadError(Exception):
    """The model cannot be served; the message is the one-line reason shown to the user."""


class FetchError(Exception):
    """Downloading the model failed; `transient` errors are worth another try."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
