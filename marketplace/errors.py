"""Domain errors raised by services; the API turns them into one JSON error shape."""


class DomainError(Exception):
    """A rule refused an action. ``code`` is stable and machine-readable; ``field`` names the
    input at fault, if any; ``status`` is the HTTP status the API answers with."""

    status = 400
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field


class ValidationFailed(DomainError):
    status = 400
    default_code = "invalid"


class NotFound(DomainError):
    status = 404
    default_code = "not_found"


class PermissionDenied(DomainError):
    status = 403
    default_code = "permission_denied"


class Conflict(DomainError):
    """Illegal state transition, capacity gone, or a concurrent change (HTTP 409)."""

    status = 409
    default_code = "conflict"


class Unprocessable(DomainError):
    """Well-formed input the rules refuse, e.g. insufficient funds (HTTP 422)."""

    status = 422
    default_code = "unprocessable"
