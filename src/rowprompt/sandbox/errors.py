"""OpenAI error bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

INVALID = "invalid_request_error"


class APIError(Exception):
    """An error the sandbox answers with, in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI sends for this error."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = INVALID, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """An OpenAI error body; all four keys are always present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def missing(param: str) -> APIError:
    """400 for a missing required parameter."""
    return APIError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


_JSON_TYPES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    type(None): "null",
}


def describe(value: Any) -> str:
    """How OpenAI names a JSON value's type in messages ("a string", "an array", ...)."""
    return _JSON_TYPES.get(type(value), "an unknown type")


def wrong_type(param: str, expected: str, value: Any) -> APIError:
    """400 for a parameter of the wrong JSON type, worded as OpenAI does."""
    return APIError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {describe(value)} instead.",
        param=param,
        code="invalid_type",
    )


def not_found(kind: str, object_id: str, param: str = "id") -> APIError:
    """404 for an unknown object id, e.g. ``No such File object: file-abc``."""
    return APIError(404, f"No such {kind} object: {object_id}", param=param)


def server_error(status: int = 500) -> APIError:
    """A 5xx ``server_error`` as OpenAI sends them."""
    if status == 503:
        msg = "The server is overloaded or not ready yet."
    else:
        msg = (
            "The server had an error while processing your request. Sorry about that! You can "
            "retry your request, or contact us through our help center at help.openai.com if "
            "the error persists."
        )
    return APIError(status, msg, type="server_error")
