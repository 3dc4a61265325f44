"""Typed dependencies: the worker's Service, its settings, the client key check and the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Forbidden, Unauthenticated
from service.http.keys import KEY_HEADER, ClientKeys
from service.serving import Service
from service.settings import Settings

bearer = HTTPBearer(auto_error=False, description="the admin token from the service's settings")
client_key = APIKeyHeader(
    name=KEY_HEADER, auto_error=False, scheme_name="ClientKey",
    description="a client key from the service's `client_keys` (required once any is configured)",
)


def service_of(request: Request) -> Service:
    return request.app.state.service


# async: FastAPI runs sync dependencies in its threadpool, an extra hop on every request
async def get_service(request: Request) -> Service:
    return service_of(request)


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_settings(service: ServiceDep) -> Settings:
    return service.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def caller_key_id(request: Request, presented: str | None) -> str | None:
    """The name of the caller's client key `presented` (401 without one, 403 with an unknown
    one), or None while no client key is configured."""
    keys: ClientKeys = request.app.state.keys
    return keys.identify(presented)


async def client_key_id(request: Request, presented: Annotated[str | None, Depends(client_key)]) -> str | None:
    """`caller_key_id` as a dependency (the OpenAPI document lists the header as its security scheme)."""
    return caller_key_id(request, presented)


KeyIdDep = Annotated[str | None, Depends(client_key_id)]


async def require_admin(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """401 without a bearer token, 403 with a wrong one (or when no admin token is configured)."""
    if credentials is None:
        raise Unauthenticated("authorization", "an admin bearer token is required")
    expected = settings.admin_secret
    if expected is None:
        raise Forbidden("authorization", "admin endpoints are disabled (no admin token is configured)")
    if not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Forbidden("authorization", "the admin token is wrong")


AdminDep = Depends(require_admin)
