"""Domain errors and their two wire shapes, mapped in exactly one place (the app's middleware).

Everything the server refuses is an `ApiError` with the HTTP status and a message that says what is
wrong and how to fix it. Routes under /v1 answer in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}` (what OpenAI clients parse); every other route in the
Open Inference Protocol's `{"error": "message"}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

OPENAI_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
OPENAI_CODES = {404: "model_not_found", 408: "request_timeout", 413: "request_too_large", 429: "rate_limit_exceeded"}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.close = close  # the connection cannot be reused (a body left half read)

    def openai_body(self) -> dict[str, object]:
        kind = OPENAI_TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.code or OPENAI_CODES.get(self.status),
            }
        }

    def v2_body(self) -> dict[str, object]:
        return {"error": self.message}

    def response(self, openai: bool) -> web.Response:
        body = self.openai_body() if openai else self.v2_body()
        resp = web.Response(
            status=self.status, text=json.dumps(body), content_type="application/json", headers=self.headers
        )
        if self.close:
            resp.force_close()
        return resp


def is_openai(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")
