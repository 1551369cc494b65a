"""OpenAPI 3.1 description of the FHIR HTTP connector (served at ``GET /openapi.json``).

Schemas describe the resources at the level stafet reads them (resourceType plus the elements of
the contract in :mod:`stafet.inbound.fhir_referral`); full FHIR validation is fhir.resources' job.
The examples are the demo's sample resources (``demo/fhir_samples.py``), committed beside this
module as ``openapi-examples.json``; the tests keep the file equal to the samples and parse every
example, so each is one the connector accepts.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from stafet.inbound.fhir_referral import OUTPUT_TYPES, PAYLOAD_PART_EXT, PAYLOAD_PARTS, REASON_CODES
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM, YDER_SYSTEM

_REF = {"$ref": "#/components/schemas/Reference"}
_STR = {"type": "string"}
_TIME = {
    "type": "string",
    "description": "FHIR dateTime with UTC offset (a bare date = 00:00 Europe/Copenhagen)",
}


def _obj(required: list[str], description: str = "", **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": props}
    if description:
        schema["description"] = description
    return schema


def _rt(name: str) -> dict[str, Any]:
    return {"const": name}


def _arr(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


SCHEMAS: dict[str, Any] = {
    "Reference": _obj(
        [],
        "A party or the child: identifier (+ display), or a reference to a "
        "contained resource (#id) or Bundle entry (fullUrl)",
        reference=_STR,
        display=_STR,
        identifier=_obj(
            ["value"],
            system={"type": "string", "examples": [SOR_SYSTEM, YDER_SYSTEM, CPR_SYSTEM]},
            value=_STR,
        ),
    ),
    "ServiceRequest": _obj(
        [
            "resourceType",
            "identifier",
            "status",
            "intent",
            "subject",
            "requester",
            "performer",
            "authoredOn",
        ],
        "A referral; active = submitted (versionId 2+ = modified), on-hold = "
        "modified, revoked = cancelled",
        resourceType=_rt("ServiceRequest"),
        identifier=_arr(_obj(["value"], system=_STR, value=_STR)),
        status={"enum": ["active", "on-hold", "revoked", "entered-in-error"]},
        intent=_STR,
        subject=_REF,
        requester=_REF,
        performer=_arr(_REF),
        authoredOn=_TIME,
        contained={
            "type": "array",
            "description": "Patient #child (CPR, name, address with the "
            "DK-core municipality extension or district); RelatedPerson guardians; "
            "Organization PPR / family department",
        },
        supportingInfo=_arr(_REF),
        reasonCode=_arr(_obj([], text=_STR)),
    ),
    "Task": _obj(
        ["resourceType", "status", "intent", "focus", "for", "owner"],
        "A triage decision on a referral",
        resourceType=_rt("Task"),
        status={
            "enum": [
                "accepted",
                "rejected",
                "ready",
                "in-progress",
                "completed",
                "failed",
                "cancelled",
            ]
        },
        intent=_STR,
        focus=_REF,
        owner=_REF,
        requester=_REF,
        lastModified=_TIME,
        authoredOn=_TIME,
        code=_obj([], "coding code 'forward' = forwarded to the owner"),
        businessStatus=_obj([], "'forwarded' or 'expired'"),
        statusReason=_obj(
            [],
            "required when rejected",
            text=_STR,
            coding=_arr(_obj(["code"], system=_STR, code={"enum": list(REASON_CODES)})),
        ),
        note=_arr(_obj(["text"], text=_STR)),
        output=_arr(
            _obj(
                ["type", "valueString"],
                type=_obj(["text"], text={"enum": list(OUTPUT_TYPES)}),
                valueString=_STR,
            )
        ),
        **{"for": _REF},
    ),
    "Communication": _obj(
        ["resourceType", "status", "basedOn", "subject", "sent", "payload"],
        "Assessment completed: the status letter",
        resourceType=_rt("Communication"),
        status={"const": "completed"},
        basedOn=_arr(_REF),
        subject=_REF,
        sent=_TIME,
        sender=_REF,
        recipient=_arr(_REF),
        payload=_arr(
            _obj(
                ["contentString"],
                f"tagged by extension {PAYLOAD_PART_EXT} "
                f"({', '.join(PAYLOAD_PARTS)}); untagged: summary, then plan",
                contentString=_STR,
                extension=_arr(_obj(["url", "valueCode"])),
            )
        ),
    ),
    "Bundle": _obj(
        ["resourceType", "type", "entry"],
        "Several resources about one child",
        resourceType=_rt("Bundle"),
        type={"enum": ["message", "collection", "transaction", "batch"]},
        entry=_arr(_obj(["resource"], fullUrl=_STR, resource={"type": "object"})),
    ),
    "OperationOutcome": _obj(
        ["resourceType", "issue"],
        resourceType=_rt("OperationOutcome"),
        issue=_arr(
            _obj(
                ["severity", "code"],
                severity=_STR,
                code={
                    "enum": [
                        "informational",
                        "structure",
                        "required",
                        "value",
                        "invalid",
                        "not-supported",
                        "not-found",
                        "code-invalid",
                        "too-long",
                        "transient",
                        "exception",
                    ]
                },
                diagnostics=_STR,
                expression=_arr(_STR),
            )
        ),
    ),
}


def _outcome(description: str, **headers: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/fhir+json": {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
        },
    }
    if headers:
        response["headers"] = {k: {"description": v, "schema": _STR} for k, v in headers.items()}
    return response


RESPONSES = {
    "202": _outcome(
        "Stored durably on ingest.fhir; the receipt names the event ids",
        **{"X-Stafet-Event-Id": "id of the (first) event"},
    ),
    "400": _outcome(
        "Not valid FHIR or a required element is missing: every issue listed; also on dlq.fhir"
    ),
    "413": _outcome("Body larger than STAFET_FHIR_MAX_BODY_BYTES"),
    "415": _outcome("Content-Type is not application/fhir+json or application/json (UTF-8)"),
    "422": _outcome("Well-formed but unknown referral (not-found) or municipality (code-invalid)"),
    "503": _outcome(
        "Not stored (Kafka did not confirm, or the referral index is loading): send "
        "the same body again",
        **{"Retry-After": "seconds"},
    ),
}


def _post(summary: str, schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    media = {
        "schema": {"$ref": f"#/components/schemas/{schema}"}
        if schema != "any"
        else {
            "oneOf": [
                {"$ref": f"#/components/schemas/{s}"}
                for s in ("ServiceRequest", "Task", "Communication", "Bundle")
            ]
        },
        "examples": {k: {"value": v} for k, v in examples.items()},
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/fhir+json": media, "application/json": media},
            },
            "responses": RESPONSES,
        }
    }


@lru_cache(maxsize=1)
def openapi() -> dict[str, Any]:
    """The OpenAPI document (built once)."""
    examples = json.loads(
        resources.files(__package__).joinpath("openapi-examples.json").read_text("utf-8")
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stafet FHIR referral API",
            "version": "1.0.0",
            "description": "Referrals to child and adolescent psychiatry, triage decisions "
            "and status letters, as FHIR R4 JSON. Accepted = durably stored "
            "(202); stafet then tells every party that must act.",
        },
        "paths": {
            "/fhir/ServiceRequest": _post(
                "Submit, modify or cancel a referral", "ServiceRequest", examples["ServiceRequest"]
            ),
            "/fhir/Task": _post(
                "A triage decision: accepted, rejected, forwarded, expired",
                "Task",
                examples["Task"],
            ),
            "/fhir/Communication": _post(
                "Assessment completed (status letter)",
                "Communication",
                examples["Communication"],
            ),
            "/fhir": _post(
                "Any of the above, or a Bundle of them about one child",
                "any",
                examples["any"],
            ),
            "/healthz": {
                "get": {
                    "summary": "Liveness and referral index state",
                    "responses": {"200": {"description": "up"}},
                }
            },
        },
        "components": {"schemas": SCHEMAS},
    }
