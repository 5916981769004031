"""Errors become OCI JSON bodies here, in one place; nothing else formats an error."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from mirror.oci.apipath import API_VERSION_HEADER
from mirror.oci.errors import MirrorError, RangeNotSatisfiable, TooManyRequests, Unauthorized

log = logging.getLogger("mirror.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {404: "NOT_FOUND", 405: "UNSUPPORTED", 413: "SIZE_INVALID"}


def error_response(err: MirrorError) -> web.Response:
    headers = dict(API_VERSION_HEADER)
    if isinstance(err, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{err.size}"
    if isinstance(err, TooManyRequests):
        headers["Retry-After"] = "10"
    if isinstance(err, Unauthorized) and err.detail is None:
        pass
    return web.json_response(err.body(), status=err.status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MirrorError as e:
        if e.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e.message)
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "UNKNOWN")
        return web.json_response({"errors": [{"code": code, "message": e.reason}]},
                                 status=e.status, headers=API_VERSION_HEADER)
    except (ConnectionResetError, ConnectionError):
        raise
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return web.json_response({"errors": [{"code": "UNKNOWN", "message": "internal error"}]},
                                 status=500, headers=API_VERSION_HEADER)
