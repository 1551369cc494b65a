"""MedCom Acknowledgement messages: read the ones receivers send back, build our own.

An Acknowledgement is a message Bundle whose MessageHeader has ``eventCoding`` =
``acknowledgement-message`` and ``response.identifier`` = the acknowledged MessageHeader.id,
``response.code`` ok | transient-error | fatal-error, and an OperationOutcome when not ok.

A resend after a missing acknowledgement keeps every resource id (the receiver deduplicates on
MessageHeader.id) and gets a new Bundle.id and Bundle.timestamp (MedCom messaging rule MR7).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from stafet.errors import StafetError
from stafet.ids import stable_uuid
from stafet.systems import EVENT_SYSTEM

ACK_EVENT = "acknowledgement-message"
ACK_PROFILE = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/medcom-messaging-acknowledgement"
)
ACK_HEADER_PROFILE = (
    "http://medcomfhir.dk/ig/acknowledgement/StructureDefinition/"
    "medcom-messaging-acknowledgementHeader"
)
AckCode = Literal["ok", "transient-error", "fatal-error"]
ACK_CODES: tuple[str, ...] = ("ok", "transient-error", "fatal-error")


class MessageError(StafetError):
    """An inbound message Bundle is not a usable MedCom message (the reason says why)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True, slots=True)
class MessageIds:
    """The two ids MedCom deduplicates on, and the event code."""

    bundle_id: str
    header_id: str
    event: str


@dataclass(frozen=True, slots=True)
class Ack:
    """A receiver's acknowledgement of one of our messages."""

    ids: MessageIds
    acknowledged_id: str
    code: AckCode
    diagnostics: str


def message_ids(bundle: Any) -> MessageIds:
    """Bundle.id, MessageHeader.id and event code of a message Bundle; MessageError if absent."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise MessageError("resourceType", "a message must be a Bundle")
    if bundle.get("type") != "message":
        raise MessageError(
            "Bundle.type", f"must be 'message', not {str(bundle.get('type'))[:40]!r}"
        )
    if not isinstance(bundle.get("id"), str) or not bundle["id"]:
        raise MessageError("Bundle.id", "required (receivers deduplicate on it)")
    entries = bundle.get("entry")
    header = (
        entries[0].get("resource")
        if isinstance(entries, list) and entries and isinstance(entries[0], dict)
        else None
    )
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        raise MessageError("Bundle.entry[0].resource", "the first entry must be the MessageHeader")
    if not isinstance(header.get("id"), str) or not header["id"]:
        raise MessageError("Bundle.entry[0].resource.id", "MessageHeader.id is required")
    coding = header.get("eventCoding") or {}
    event = coding.get("code") if isinstance(coding, dict) else None
    if not isinstance(event, str) or not event:
        raise MessageError("Bundle.entry[0].resource.eventCoding.code", "required")
    return MessageIds(bundle["id"], header["id"], event)


def parse_ack(body: bytes) -> Ack:
    """Read an Acknowledgement message; MessageError names what is wrong."""
    try:
        bundle = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("", f"not JSON: {exc}") from exc
    ids = message_ids(bundle)
    if ids.event != ACK_EVENT:
        raise MessageError(
            "Bundle.entry[0].resource.eventCoding.code", f"{ids.event!r} is not an {ACK_EVENT}"
        )
    header = bundle["entry"][0]["resource"]
    response = header.get("response")
    if not isinstance(response, dict) or not response.get("identifier"):
        raise MessageError(
            "MessageHeader.response.identifier",
            "required: the id of the acknowledged MessageHeader",
        )
    code = response.get("code")
    if code not in ACK_CODES:
        raise MessageError(
            "MessageHeader.response.code",
            f"{str(code)[:40]!r} is not one of {', '.join(ACK_CODES)}",
        )
    diagnostics = []
    for entry in bundle.get("entry", [])[1:]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome":
            for issue in _list(resource.get("issue")):
                if not isinstance(issue, dict):
                    continue
                details = issue.get("details")
                codes = [
                    str(c.get("code", ""))
                    for c in _list(details.get("coding") if isinstance(details, dict) else None)
                    if isinstance(c, dict)
                ]
                diagnostics.append(
                    " ".join(
                        str(x)
                        for x in filter(None, [issue.get("code"), *codes, issue.get("diagnostics")])
                    )
                )
    return Ack(ids, str(response["identifier"]), code, "; ".join(diagnostics)[:500])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def build_ack(
    acknowledged: MessageIds,
    code: AckCode,
    *,
    sender_endpoint: str,
    receiver_endpoint: str,
    at: datetime | None = None,
    error_code: str | None = None,
) -> dict[str, Any]:
    """An Acknowledgement of ``acknowledged`` with deterministic ids: acknowledging the same
    message twice yields the same Bundle (what MedCom's dedupe rule resends)."""
    at = at or datetime.now(UTC)
    ids = {
        k: stable_uuid("ack", acknowledged.bundle_id, acknowledged.header_id, k)
        for k in ("bundle", "header", "sender", "receiver", "provenance", "outcome")
    }
    header: dict[str, Any] = {
        "resourceType": "MessageHeader",
        "id": ids["header"],
        "meta": {"profile": [ACK_HEADER_PROFILE]},
        "eventCoding": {"system": EVENT_SYSTEM, "code": ACK_EVENT},
        "destination": [
            {
                "endpoint": receiver_endpoint,
                "receiver": {"reference": f"Organization/{ids['receiver']}"},
            }
        ],
        "sender": {"reference": f"Organization/{ids['sender']}"},
        "source": {"endpoint": sender_endpoint},
        "response": {"identifier": acknowledged.header_id, "code": code},
    }
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"MessageHeader/{ids['header']}", "resource": header},
        {
            "fullUrl": f"Organization/{ids['sender']}",
            "resource": {"resourceType": "Organization", "id": ids["sender"]},
        },
        {
            "fullUrl": f"Organization/{ids['receiver']}",
            "resource": {"resourceType": "Organization", "id": ids["receiver"]},
        },
        {
            "fullUrl": f"Provenance/{ids['provenance']}",
            "resource": {
                "resourceType": "Provenance",
                "id": ids["provenance"],
                "target": [{"reference": f"MessageHeader/{ids['header']}"}],
                "recorded": at.isoformat(),
                "activity": {
                    "coding": [
                        {
                            "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/"
                            "medcom-messaging-activityCodes",
                            "code": "acknowledgement",
                        }
                    ]
                },
                "agent": [{"who": {"reference": f"Organization/{ids['sender']}"}}],
                "entity": [
                    {
                        "role": "revision",
                        "what": {"reference": f"MessageHeader/{acknowledged.header_id}"},
                    }
                ],
            },
        },
    ]
    if code != "ok":
        header["response"]["details"] = {"reference": f"OperationOutcome/{ids['outcome']}"}
        entries.append(
            {
                "fullUrl": f"OperationOutcome/{ids['outcome']}",
                "resource": {
                    "resourceType": "OperationOutcome",
                    "id": ids["outcome"],
                    "issue": [
                        {
                            "severity": "error",
                            "code": "processing",
                            "details": {
                                "coding": [
                                    {
                                        "system": "http://medcomfhir.dk/ig/terminology/CodeSystem/"
                                        "medcom-acknowledgement-error-codes",
                                        "code": error_code or "MSG_Mailbox_Out_Of_Operation",
                                    }
                                ]
                            },
                        }
                    ],
                },
            }
        )
    return {
        "resourceType": "Bundle",
        "id": ids["bundle"],
        "meta": {"profile": [ACK_PROFILE]},
        "type": "message",
        "timestamp": at.isoformat(),
        "entry": entries,
    }


def resend_copy(body: bytes, resend_number: int, at: datetime | None = None) -> bytes:
    """The message to send again: new Bundle.id (deterministic per resend) and timestamp, every
    other id unchanged."""
    bundle = json.loads(body)
    bundle["id"] = stable_uuid("resend", str(bundle.get("id")), str(resend_number))
    bundle["timestamp"] = (at or datetime.now(UTC)).isoformat(timespec="seconds")
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()
