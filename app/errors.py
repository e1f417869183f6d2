"""The one error body, ``{"error": {"message", "type", "param", "code"}}``, and the handlers that map every
failure (domain errors, HTTP errors, validation errors, crashes) onto it. No traceback reaches a client."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["ApiError", "error_body", "error_response", "install_error_handlers"]

logger = logging.getLogger("rnnlm")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    503: "service_unavailable",
    500: "server_error",
}


class ApiError(Exception):
    """A request the service refuses: status code, message, and the parameter at fault (if one is)."""

    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict | None = None, kind: str | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers
        self.kind = kind  # the error body's "type", when not the status's usual one


def error_body(status: int, message: str, param: str | None = None, kind: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": kind or ERROR_TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": status,
        }
    }


def error_json(status: int, message: str) -> bytes:
    """The error body as bytes, for responses sent below FastAPI (pure ASGI middleware, the HTTP protocol)."""
    return json.dumps(error_body(status, message)).encode()


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None, kind: str | None = None
) -> JSONResponse:
    if status in (429, 503):  # refused for load: the connection closes, so a flood of kept-alive clients must
        headers = {**(headers or {}), "Connection": "close"}  # reconnect, beside everyone else (probes too)
    return JSONResponse(error_body(status, message, param, kind), status_code=status, headers=headers)


def _param_from_loc(loc: tuple) -> str | None:
    """The field at fault, as the client named it: list indices kept, pydantic's union branch tags
    ("constrained-str", "list[int]") dropped."""
    parts = [
        str(p)
        for p in loc
        if p not in ("body", "query", "path", "header") and (isinstance(p, int) or str(p).isidentifier())
    ]
    return ".".join(parts) or None


def _field(error: dict) -> str | None:
    """The request's top-level field an error is about."""
    return (_param_from_loc(tuple(error.get("loc", ()))) or "").split(".")[0] or None


def _message(error: dict, param: str | None) -> str:
    """One validation error in the project's words: over a server limit, it says the value and the limit."""
    kind, ctx, value = error.get("type"), error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        return f"unknown field {param!r}"
    if kind == "missing" and param is None:
        return "the request needs a JSON object as its body"
    if kind in ("model_attributes_type", "model_type", "dict_type") and param is None:
        return "the request's body must be a JSON object"
    if kind == "missing":
        return f"field {param!r} is required"
    if kind == "less_than_equal" and isinstance(value, (int, float)):
        return f"{param} is {value:,}; the limit is {ctx['le']:,}"
    if kind == "string_too_long" and isinstance(value, str):
        return f"{param} has {len(value):,} characters; the limit is {ctx['max_length']:,}"
    if kind == "too_long" and isinstance(value, list):
        return f"{param} has {len(value):,} items; the limit is {ctx['max_length']:,}"
    message = error.get("msg", "invalid request")
    return f"{param}: {message}" if param else message


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors() or [{"msg": "invalid request", "loc": (), "type": ""}]
    if errors[0].get("type") == "json_invalid":
        return error_response(400, "request body is not valid JSON")
    # A value that fits none of a union's branches has an error from each; the branch of the value's type (its
    # error is not a type mismatch: a text too long, say) names the problem, and the others are not counted.
    fitting = [e for e in errors if not str(e.get("type", "")).endswith("_type")]
    first = (fitting or errors)[0]
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = _message(first, param)
    others = {_field(e) for e in errors} - {_field(first)}
    if others:
        message += f" (and problems with {len(others)} more field{'s' if len(others) > 1 else ''})"
    return error_response(422, message, param)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    messages = {404: f"no route {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    message = messages.get(exc.status_code) or str(exc.detail)
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.headers, exc.kind)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(Exception, _unexpected_error)
