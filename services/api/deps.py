"""What the API's routes depend on (FastAPI dependencies): its settings, job store and scheduler, the caller's
authorization, the bound on followed event streams, and request bodies read as bounded JSON objects."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .scheduler import Scheduler
from .settings import ApiSettings
from .store import JobStore

MAX_JSON_DEPTH = 32  # nesting of a request body; a JobSpec is five levels deep


@dataclass
class Followers:
    """Event streams followed now, each holding a blocking Redis read; at most `limit` at once."""

    limit: int
    count: int = 0


def _settings(request: Request) -> ApiSettings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def _followers(request: Request) -> Followers:
    return request.app.state.followers


SettingsDep = Annotated[ApiSettings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
SchedulerDep = Annotated[Scheduler, Depends(_scheduler)]
FollowersDep = Annotated[Followers, Depends(_followers)]
_bearer = HTTPBearer(auto_error=False)


def authorize(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer token, when one is configured; without one, POST bodies must be JSON."""
    if settings.api_token is None:
        _json_posts_only(request)
        return
    if credentials is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    # Bytes, not str: compare_digest refuses non-ASCII str; headers arrive decoded as latin-1.
    given = credentials.credentials.encode("latin-1", errors="replace")
    if not hmac.compare_digest(given, settings.api_token.get_secret_value().encode()):
        raise HTTPException(403, "wrong bearer token")


def _json_posts_only(request: Request) -> None:
    """With no token a web page in the user's browser could POST here cross-origin, but only as text/plain,
    a form or multipart: a JSON content type needs a CORS preflight, which this API never grants."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.method == "POST" and media_type != "application/json":
        raise HTTPException(415, f"POST bodies must be application/json, got {media_type or 'no content type'!r}")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def json_object(request: Request, what: str) -> dict[str, Any]:
    """The request body as a JSON object (routes that answer readable 422s read their bodies themselves)."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, a 4,301-digit integer, nesting past the stack
        raise HTTPException(422, f"request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise HTTPException(422, f"request body must be a JSON object: {what}")
    if _depth(body) > MAX_JSON_DEPTH:
        raise HTTPException(422, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body
