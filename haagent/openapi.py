"""The OpenAPI 3 document of the agent's HTTP API, served at `GET /v1/openapi.json`.

Kept true by tests (tests/unit/test_api_access.py, tests/integration/test_api_schema.py): every
route of `haagent.api.build_app` is documented here and every documented route exists; the
answers of a real agent match the response schemas; schemathesis generates requests from this
document against a real agent and finds no 5xx. Schemas name the fields clients rely on and
allow more (`additionalProperties` is left open), so adding a field is not a breaking change.
"""

from __future__ import annotations

from typing import Any

from haagent import __version__, api_admin

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {
        "description": "bad parameters or body (JSON); a request that aiohttp's HTTP parser "
        "refuses before any handler sees it (malformed HTTP, a request line over 8,190 bytes) "
        "gets its plain-text 400",
        "content": {
            "application/json": {"schema": _ref("Error")},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    "401": _json(_ref("Error"), "missing or wrong token"),
    "413": _json(_ref("Error"), "body too large"),
    "414": _json(_ref("Error"), "query string too long"),
    "415": _json(_ref("Error"), "Content-Type, charset or Content-Encoding not accepted"),
}
_ADMIN_ERRORS = {
    **_ERRORS,
    "403": _json(_ref("Error"), "the read token cannot change anything"),
    "404": _json(_ref("Error"), "unknown guest, node or action"),
}
_OUTCOMES = {
    "200": _json(_ref("Outcome"), "the replicated command applied"),
    "409": _json(_ref("Outcome"), "the replicated command was refused (see detail)"),
    "503": _json(
        {"oneOf": [_ref("Outcome"), _ref("Error")]},
        "unknown outcome (no majority in time: it may still apply) or the agent is starting",
    ),
    **_ADMIN_ERRORS,
}
_READ: list[dict[str, list[str]]] = [{"bearer": []}, {}]  # {}: only where `api_open_reads` is set
_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]


def _name_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": NAME_PATTERN},
    }


def _int_query(name: str, maximum: int, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": 0, "maximum": maximum},
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Outcome": {
        "type": "object",
        "required": ["outcome", "detail"],
        "properties": {
            "outcome": {"type": "string", "enum": ["accepted", "refused", "unknown"]},
            "detail": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["healthy", "reason"],
        "properties": {"healthy": {"type": "boolean"}, "reason": {"type": "string"}},
    },
    "Status": {
        "type": "object",
        "required": ["version", "cluster", "node", "leader", "quorum", "nodes", "guests"],
        "properties": {
            "version": {"type": "integer"},
            "cluster": {"type": "string"},
            "node": {"type": "string"},
            "leader": {"type": ["string", "null"]},
            "term": {"type": "integer"},
            "quorum": {"type": "boolean"},
            "commit_index": {"type": "integer"},
            "nodes": {"type": "object", "additionalProperties": {"type": "object"}},
            "guests": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
    "WhatIf": {
        "type": "object",
        "required": ["fail", "quorum_kept", "moves", "unplaced", "tolerated_node_failures"],
        "properties": {
            "fail": {"type": "array", "items": {"type": "string"}},
            "quorum_kept": {"type": "boolean"},
            "moves": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["from", "to"],
                    "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                },
            },
            "unplaced": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerated_node_failures": {"type": "integer"},
            "tolerated_detail": {"type": "string"},
            "view_fresh": {"type": "boolean"},
        },
    },
    "Event": {
        "type": "object",
        "required": ["index", "type", "at", "summary", "command"],
        "properties": {
            "index": {"type": "integer", "description": "Raft-applied index after it"},
            "type": {"type": "string", "description": "the replicated command's type"},
            "at": {
                "type": ["number", "null"],
                "description": "the proposer's wall clock, seconds since the epoch (display)",
            },
            "summary": {"type": "string", "description": "what happened and why"},
            "command": {"type": "object", "description": "the command (lists cut to 20)"},
        },
    },
    "Events": {
        "type": "object",
        "required": ["events", "truncated", "oldest_index", "capacity"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event")},
            "truncated": {"type": "boolean"},
            "oldest_index": {"type": ["integer", "null"]},
            "capacity": {"type": "integer"},
        },
    },
}

OPENAPI_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "haagent agent API",
        "version": __version__,
        "description": "One agent's view of its cluster and the admin verbs. Reads take the "
        "read or the admin token (or none where `api_open_reads` is set), the POST verbs the "
        'admin token; see README "The API".',
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": _SCHEMAS,
    },
    "paths": {
        "/v1/health": {
            "get": {
                "summary": "200 while this agent holds a lease and its loop is fresh",
                "security": [{}],
                "responses": {
                    "200": _json(_ref("Health"), "healthy"),
                    "503": _json(_ref("Health"), "no lease or a stale loop"),
                    **_ERRORS,
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (token needed when api_open_metrics = false)",
                "security": _READ,
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "the status document",
                "security": _READ,
                "responses": {
                    "200": _json(_ref("Status"), "the cluster as this agent sees it"),
                    "503": _json(_ref("Error"), "the agent is starting"),
                    **_ERRORS,
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "recent committed transitions with their reasons, oldest first",
                "security": _READ,
                "parameters": [
                    _int_query("since", 2**63 - 1, "only events with a higher index"),
                    _int_query("limit", 1000, "at most this many (the newest), default 100"),
                ],
                "responses": {
                    "200": _json(_ref("Events"), "the events"),
                    "503": _json(_ref("Error"), "the agent is starting"),
                    **_ERRORS,
                },
            }
        },
        "/v1/whatif": {
            "get": {
                "summary": "where the guests of the given nodes would go if they failed now",
                "security": _READ,
                "parameters": [
                    {
                        "name": "fail",
                        "in": "query",
                        "required": True,
                        "description": "node names, comma-separated (at most 256)",
                        "schema": {"type": "string", "maxLength": 4096},
                    }
                ],
                "responses": {
                    "200": _json(_ref("WhatIf"), "the what-if answer"),
                    "503": _json(_ref("Error"), "another what-if runs, or the agent starts"),
                    **_ADMIN_ERRORS,
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "summary": "this document",
                "security": _READ,
                "responses": {
                    "200": _json({"type": "object"}, "the OpenAPI document"),
                    **_ERRORS,
                },
            }
        },
        "/v1/guests/{guest}/{action}": {
            "post": {
                "summary": "enable (run, also clears the error state) or disable a guest",
                "security": _ADMIN,
                "parameters": [
                    _name_param("guest", "guest name"),
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["enable", "disable"]},
                    },
                ],
                "responses": _OUTCOMES,
            }
        },
        "/v1/guests/{guest}/migrate": {
            "post": {
                "summary": "live-migrate a running guest to a node, conditional on its "
                "generation (given, or the one this agent sees); answers once the intent "
                "committed, the status then shows the migration",
                "security": _ADMIN,
                "parameters": [_name_param("guest", "guest name")],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["node"],
                                "additionalProperties": False,
                                "properties": {
                                    "node": {"type": "string", "minLength": 1, "maxLength": 63},
                                    "generation": {
                                        "type": "integer",
                                        "minimum": 0,
                                        "maximum": 2**63 - 1,
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": _OUTCOMES,
            }
        },
        "/v1/nodes/{node}/maintenance": {
            "post": {
                "summary": "put a node in maintenance (drain it) or end that",
                "security": _ADMIN,
                "parameters": [_name_param("node", "node name")],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["on"],
                                "additionalProperties": False,
                                "properties": {"on": {"type": "boolean"}},
                            }
                        }
                    },
                },
                "responses": _OUTCOMES,
            }
        },
        "/v1/nodes/{node}/confirm-fenced": {
            "post": {
                "summary": "an admin verified that the failed node is powered off",
                "security": _ADMIN,
                "parameters": [_name_param("node", "node name")],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"by": {"type": "string", "maxLength": 64}},
                            }
                        }
                    },
                },
                "responses": _OUTCOMES,
            }
        },
        **api_admin.openapi_paths(_name_param, _OUTCOMES, _ADMIN),
    },
}
