"""The OpenAPI schema: FastAPI's, plus the request signature (four headers, all required together,
as API-key security schemes) and the models the event stream's messages refer to."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from jobs import Event, JobState
from node.api.middleware import UNSIGNED_PATHS
from shoal._auth import (
    AUTH_VERSION,
    HEADER_BODY_SHA256,
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_VERSION,
)

_SIGNATURE_SCHEMES = {  # OpenAPI security scheme name → (header, description)
    "ShoalKey": (HEADER_KEY, "urlsafe base64 of the client's raw 32-byte Ed25519 public key"),
    "ShoalTimestamp": (HEADER_TIMESTAMP, "unix seconds; rejected when more than 5 minutes off"),
    "ShoalNonce": (HEADER_NONCE, "16 random bytes as lower-case hex; never reused"),
    "ShoalSignature": (HEADER_SIGNATURE, "urlsafe base64 Ed25519 signature of shoal-auth-2\\nMETHOD\\nHOST\\n"
                                         "TARGET\\nTIMESTAMP\\nNONCE\\nSHA256-HEX(BODY); see shoal._auth. Send "
                                         f"SHA256-HEX(BODY) as {HEADER_BODY_SHA256} too, and a node open only to "
                                         "some keys checks the signature before the body (other requests share "
                                         "room that strangers can fill)"),
    "ShoalAuthVersion": (HEADER_VERSION, f"{AUTH_VERSION}: the version of the signed string (it covers the Host)"),
}


def install_schema(app: FastAPI) -> None:
    """Replace ``app.openapi`` with one that documents the signature on every signed route."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {})
            for model in (Event, JobState):  # referenced from the event stream's schema
                model_schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
                components.setdefault("schemas", {}).update(model_schema.pop("$defs", {}))
                components["schemas"][model.__name__] = model_schema
            schemes = components.setdefault("securitySchemes", {})
            for name, (header, description) in _SIGNATURE_SCHEMES.items():
                schemes[name] = {"type": "apiKey", "in": "header", "name": header, "description": description}
            requirement = {name: [] for name in _SIGNATURE_SCHEMES}
            for path, operations in schema.get("paths", {}).items():
                if path not in UNSIGNED_PATHS:
                    for operation in operations.values():
                        operation["security"] = [requirement]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
