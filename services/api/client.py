"""A small HTTP client of the jobs API, used by the `searchr1 jobs` and `searchr1 eval` commands."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx

from services.contracts import JobEvent

DEFAULT_API_URL = "http://127.0.0.1:8080"


class ApiError(RuntimeError):
    """The API refused a request; the message is the API's own explanation."""


class JobsClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = (url or os.environ.get("SEARCHR1_API_URL") or DEFAULT_API_URL).rstrip("/")
        token = token if token is not None else os.environ.get("SEARCHR1_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the searchr1 API at {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except json.JSONDecodeError:
                detail = response.text
            raise ApiError(f"{method} {path} answered {response.status_code}: {detail}")
        return response.json()

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=body)

    def list(self, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return self._call("GET", "/v1/jobs", params=params)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel", json={})  # JSON: an open API takes no other POST

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/metrics")["history"]

    def submit_evaluation(self, body: dict[str, Any]) -> dict[str, Any]:
        """Submit an EvaluationRequest; an evaluation is a job, so `events` and `cancel` take its id too."""
        return self._call("POST", "/v1/evaluations", json=body)

    def evaluation(self, evaluation_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/evaluations/{evaluation_id}")

    def evaluations(self, state: str | None = None, limit: int = 50) -> dict[str, Any]:
        params = {"limit": limit, **({"state": state} if state else {})}
        return self._call("GET", "/v1/evaluations", params=params)

    def events(self, job_id: str, follow: bool) -> Iterator[JobEvent]:
        """The job's events as they come (server-sent events); with `follow`, until the job ends."""
        timeout = httpx.Timeout(30.0, read=None if follow else 30.0)
        try:
            with self._http.stream(
                "GET", f"/v1/jobs/{job_id}/events", params={"follow": follow}, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(f"events of {job_id} answered {response.status_code}: {response.text}")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield JobEvent.model_validate_json(line[len("data: ") :])
        except httpx.HTTPError as exc:
            raise ApiError(f"lost the event stream of {job_id}: {exc}") from None
