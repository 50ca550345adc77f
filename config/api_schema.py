"""OpenAPI post-processing: the refusals every API operation can answer, documented once here."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "additionalProperties": {},
}
_REFUSALS = {
    "400": "malformed parameters or body (the message names the problem)",
    "401": "no or an unknown token (WWW-Authenticate: Token)",
    "403": "not a researcher or admin",
}


_URI_TOO_LONG = (
    "the request line is longer than the web server accepts (gunicorn's default: 4,094 bytes); "
    "send fewer query values"
)


def document_refusals(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Add 400/401/403 and 414 to every operation, 404 where the path has parameters and 415 where there is a body,
    each with the JSON error object DRF answers with (so schemathesis' status-code and content-type checks
    hold for refusals too)."""
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            refusals = dict(_REFUSALS)
            if "{" in path:
                refusals["404"] = "no such object"
            if "requestBody" in operation:
                refusals["415"] = "the body is not JSON"
                # Every body of this API is a JSON object; an empty request is refused (400).
                operation["requestBody"]["required"] = True
            responses = operation["responses"]
            for code, description in refusals.items():
                responses.setdefault(
                    code,
                    {"description": description, "content": {"application/json": {"schema": _ERROR}}},
                )
            # Refused by the web server before the app sees it, so its body is the server's, not JSON.
            responses.setdefault("414", {"description": _URI_TOO_LONG})
    return result
