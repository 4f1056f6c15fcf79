"""The OpenAPI 3.1 document of the front door's JSON API (served at ``/v1/openapi.json``)."""

from __future__ import annotations

from webapp.frontdoor import SEED_MAX

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}
_NUM = {"type": ["number", "string", "null"],
        "description": "a number; \"inf\"/\"-inf\" for the degenerate thresholds"}


def _err(desc: str) -> dict:
    return {"description": desc, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document() -> dict:
    gen = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "status": {"enum": ["queued", "running", "rerouted", "done", "dropped", "failed"]},
            "route": {"enum": ["light", "heavy"],
                      "description": "the front door's decision (router score vs θ)"},
            "queue": {"type": "string", "description": "queue of the latest message"},
            "models": {"type": "array", "description": "models that ran, in order",
                       "items": {"type": "object", "properties": {
                           "id": {"type": "integer"}, "name": {"type": "string"}}}},
            "served_model": {"type": ["object", "null"]},
            "hardness": _NUM, "theta": _NUM, "tau": _NUM,
            "quality": {**_NUM, "description": "discriminator score of the served image"},
            "light_quality": {**_NUM, "description": "the light image's score"},
            "clip": {**_NUM, "description": "CLIP image-text cosine (real models only)"},
            "slo_s": {"type": "number"}, "seed": {"type": "integer"},
            "timings": {"type": "object", "description": "epoch seconds and durations"},
            "reason": {"type": ["string", "null"], "description": "why dropped or failed"},
            "plan_id": {"type": ["integer", "null"]},
            "status_url": {"type": "string"}, "image_url": {"type": ["string", "null"]},
        },
    }
    model = {"type": "object", "properties": {"id": {"type": "integer"},
                                              "name": {"type": "string"}}}
    plan = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"}, "planner": {"type": "string"},
            "created": {"type": ["string", "null"], "description": "ISO 8601"},
            "light": model, "heavy": model,
            "theta": {**_NUM, "description": "hardness threshold θ published"},
            "tau": {**_NUM, "description": "quality threshold τ published"},
            "router_ratio": {"type": ["number", "null"]},
            "disc_ratio": {"type": ["number", "null"]},
            "workers": {"type": "object", "description": "queue -> workers",
                        "additionalProperties": {"type": "integer"}},
            "batch": {"type": "object", "description": "model id -> batch size",
                      "additionalProperties": {"type": "integer"}},
            "demand": {**_NUM, "description": "queries/s the plan was made for"},
            "fid": {**_NUM, "description": "predicted FID"},
            "overloaded": {"type": "boolean"},
            "bindings": {"type": "object", "description": "worker -> queue applied"},
        },
    }
    busy = {"description": "Redis or the database is unavailable (see Retry-After)",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "HADIS-Celery front door", "version": "1",
                 "description": "Text-to-image generation behind a hybrid light/heavy cascade. "
                                "Optional API key: header X-API-Key (when the server sets "
                                "HADIS_API_KEYS)."},
        "components": {
            "schemas": {
                "Error": _ERROR,
                "GenerationRequest": {
                    "type": "object", "additionalProperties": False, "required": ["prompt"],
                    "properties": {
                        "prompt": {"type": "string", "minLength": 1},
                        "slo_s": {"type": "number", "exclusiveMinimum": 0,
                                  "description": "latency SLO in seconds (server default "
                                                 "HADIS_SLO_S, at most HADIS_MAX_SLO_S)"},
                        "seed": {"type": "integer", "minimum": 0, "maximum": SEED_MAX}}},
                "Generation": gen,
                "Plan": plan,
            },
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header",
                                           "name": "X-API-Key"}},
        },
        "paths": {
            "/v1/generations": {"post": {
                "summary": "Submit a prompt",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/GenerationRequest"}}}},
                "responses": {
                    "202": {"description": "accepted; poll status_url",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Generation"}}}},
                    "400": _err("bad input (invalid JSON, missing/empty/non-string prompt, "
                                "bad slo_s or seed, unknown fields)"),
                    "401": _err("missing or wrong API key"),
                    "413": _err("body larger than HADIS_MAX_REQUEST_BYTES"),
                    "429": _err("rate limit (HADIS_RATE_LIMIT_PER_MIN) exceeded"),
                    "503": busy}}},
            "/v1/generations/{id}": {"get": {
                "summary": "Status and result of a generation",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "the generation", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Generation"}}}},
                    "404": _err("unknown id"), "503": busy}}},
            "/v1/images/{id}.png": {"get": {
                "summary": "The served image",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "PNG image",
                                      "content": {"image/png": {}}},
                              "404": _err("unknown id"), "409": _err("not done yet"),
                              "503": busy}}},
            "/v1/plans": {"get": {
                "summary": "The latest plans, newest first",
                "parameters": [{"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
                "responses": {"200": {"description": "the plans", "content": {
                    "application/json": {"schema": {
                        "type": "object", "properties": {"plans": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Plan"}}}}}}},
                              "400": _err("bad limit"), "503": busy}}},
            "/v1/plans/{id}": {"get": {
                "summary": "One plan: pair, thresholds, workers and batch sizes, predicted FID",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "the plan", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Plan"}}}},
                              "404": _err("unknown id"), "503": busy}}},
            "/v1/health": {"get": {"summary": "Redis, SQL and plan status",
                                   "responses": {"200": {"description": "all up"},
                                                 "503": busy}}},
        },
    }
