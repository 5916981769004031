"""The error tree. Every error carries its OCI error code and HTTP status; one middleware turns
them into the JSON body the distribution spec defines, so handlers and the service just raise.

    MirrorError
    ├── ClientError (4xx: the request itself is wrong or asks for what does not exist)
    │   ├── NameInvalid, NameUnknown, DigestInvalid, TagInvalid, RangeNotSatisfiable
    │   ├── ManifestUnknown, BlobUnknown, Unsupported, Unauthorized, Denied, TooManyRequests
    │   ├── ManifestUnsupported (the upstream has it only as Docker schema 1)
    └── UpstreamError (the upstream failed us: 502/503/504, never a wrong byte)
        ├── UpstreamUnavailable (connection refused/reset, timeout)
        └── UpstreamRejected (unexpected status from the upstream)
            └── UpstreamAuthFailed (the upstream refused the mirror's own credentials)
    VerificationError (content did not hash to its digest; never reaches a client as data)
"""

from __future__ import annotations

from typing import Any


class MirrorError(Exception):
    code = "UNKNOWN"
    status = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return {"errors": [err]}


class ClientError(MirrorError):
    status = 400


class NameInvalid(ClientError):
    code = "NAME_INVALID"


class NameUnknown(ClientError):
    code = "NAME_UNKNOWN"
    status = 404


class DigestInvalid(ClientError):
    code = "DIGEST_INVALID"


class TagInvalid(ClientError):
    code = "TAG_INVALID"


class RangeNotSatisfiable(ClientError):
    code = "RANGE_INVALID"
    status = 416

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


class ManifestUnknown(ClientError):
    code = "MANIFEST_UNKNOWN"
    status = 404


class ManifestUnsupported(ClientError):
    """What the upstream holds is a format the mirror cannot serve verified (Docker schema 1):
    asking again cannot help, so a 4xx and never a 502 the client would retry."""

    code = "MANIFEST_INVALID"


class BlobUnknown(ClientError):
    code = "BLOB_UNKNOWN"
    status = 404


class Unsupported(ClientError):
    code = "UNSUPPORTED"
    status = 405


class Unauthorized(ClientError):
    code = "UNAUTHORIZED"
    status = 401


class Denied(ClientError):
    code = "DENIED"
    status = 403


class TooManyRequests(ClientError):
    code = "TOOMANYREQUESTS"
    status = 429


class PayloadTooLarge(ClientError):
    code = "SIZE_INVALID"
    status = 413


class UpstreamError(MirrorError):
    """The upstream could not give us the content; the client may retry later."""

    code = "UNAVAILABLE"
    status = 502


class UpstreamUnavailable(UpstreamError):
    status = 503


class UpstreamRejected(UpstreamError):
    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamAuthFailed(UpstreamRejected):
    """The upstream refused the mirror's credentials, or wants some and none are configured.
    403 DENIED, not 502: clients print the body of a 4xx only (containers/image shows a 5xx as
    its status line), the operator has to act, and a retry cannot help. Still an UpstreamError:
    a cached tag is served stale meanwhile."""

    code = "DENIED"
    status = 403


class VerificationError(UpstreamError):
    """Bytes from upstream (or a bundle) did not hash to the digest that names them."""

    code = "DIGEST_INVALID"
    status = 502


class DiskFull(MirrorError):
    """The hot tier has no room for a blob; callers stream it through uncached instead."""

    code = "UNAVAILABLE"
    status = 503


class CacheConflict(MirrorError):
    """Content being written was removed or replaced under us by another process."""

    code = "UNAVAILABLE"
    status = 503


class ConfigError(Exception):
    """A config file that cannot be used; `problems` holds one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
