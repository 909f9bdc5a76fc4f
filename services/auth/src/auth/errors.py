from __future__ import annotations

from itsm_shared.errors import DomainError, Unavailable


class OAuthError(DomainError):
    """RFC 6749 §5.2 error, rendered as problem+json that also carries `error` and `error_description`."""

    status, title, type_slug = 400, "Invalid grant", "oauth-error"

    def __init__(self, error: str, description: str, *, status: int = 400, keeps_writes: bool = False) -> None:
        headers = {"WWW-Authenticate": 'Basic realm="itsm"'} if status == 401 else None
        super().__init__(description, headers=headers, extra={"error": error, "error_description": description})
        self.status = status
        self.title = error
        self.keeps_writes = keeps_writes


class Busy(Unavailable):
    """Every password-hashing slot is taken and the queue is full: 503, retry in a second."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": "1"}


def invalid_grant(*, keeps_writes: bool = False) -> OAuthError:
    # One message for unknown user, wrong password, throttled or disabled account: no enumeration.
    # keeps_writes: the refusal itself is recorded (a failed login counted, a reused token's family revoked).
    return OAuthError("invalid_grant", "the credentials are invalid", keeps_writes=keeps_writes)


def invalid_request(parameter: str) -> OAuthError:
    return OAuthError("invalid_request", f"missing parameter: {parameter}")


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    # RFC 6749 §5.2: 401 with WWW-Authenticate: Basic (the scheme the token endpoint accepts).
    return OAuthError("invalid_client", description, status=401)
