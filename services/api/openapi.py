"""How the API documents itself: error responses and request bodies in its OpenAPI schema."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong, naming the field where a field is wrong")


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: error("no bearer token"), 403: error("wrong bearer token"),
    415: error("with no token configured: a POST that is not application/json"),
}  # fmt: skip
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error("no such job")}
INVALID: dict[int | str, dict[str, Any]] = {
    413: error("request body too large"), 422: error("invalid request body; the detail names the field"),
}  # fmt: skip


def body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def add_component_schemas(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put the JSON schemas of request models that routes read themselves (to answer readable 422s) into the
    OpenAPI components, where the routes' request bodies refer to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
