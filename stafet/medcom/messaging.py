"""What every MedCom message Bundle stafet builds shares (MedCom Messaging IG): the resource
skeleton, the MessageHeader's routing, the Bundle around it, and the checks a receiver runs on
every message whatever its kind.

The HospitalNotification and CareCommunication builders add their own resources and rules; the
parts here are written once so that the two cannot drift apart on what MedCom routes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from stafet.systems import EVENT_SYSTEM, MEDCOM_TERMINOLOGY

FULL_URL_BASE: Final = "https://stafet.dk/fhir"
ACTIVITY_SYSTEM: Final = MEDCOM_TERMINOLOGY + "medcom-messaging-activityCodes"
DESTINATION_USE_SYSTEM: Final = MEDCOM_TERMINOLOGY + "medcom-messaging-destinationUse"
_MESSAGING: Final = "http://medcomfhir.dk/ig/messaging/StructureDefinition/"
EXT_DESTINATION_USE: Final = _MESSAGING + "medcom-messaging-destinationUseExtension"
#: a FHIR instant: date, time and a UTC offset (MedCom rejects a timestamp without one)
INSTANT: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def resource(resource_type: str, rid: str, profiles: dict[str, str]) -> dict[str, Any]:
    """A resource's skeleton: type, id and the MedCom profile it claims."""
    return {
        "resourceType": resource_type,
        "id": rid,
        "meta": {"profile": [profiles[resource_type]]},
    }


def header_routing(
    event_code: str,
    *,
    destination: str,
    receiver: str,
    sender: str,
    source: str,
    focus: Sequence[str],
) -> dict[str, Any]:
    """The MessageHeader elements MedCom routes and acknowledges on: the event, one primary
    destination (no cc) with its EAN endpoint and receiver, the sender, the source endpoint
    acknowledgements go back to, and the focus. References are ``Type/id``."""
    return {
        "eventCoding": {"system": EVENT_SYSTEM, "code": event_code},
        "destination": [
            {
                "extension": [
                    {
                        "url": EXT_DESTINATION_USE,
                        "valueCoding": {"system": DESTINATION_USE_SYSTEM, "code": "primary"},
                    }
                ],
                "endpoint": destination,
                "receiver": {"reference": receiver},
            }
        ],
        "sender": {"reference": sender},
        "source": {"endpoint": source},
        "focus": [{"reference": f} for f in focus],
    }


def message_bundle(
    bundle: dict[str, Any], timestamp: str, resources: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """``bundle`` (its skeleton) as a message Bundle of ``resources``, the MessageHeader first."""
    return bundle | {
        "type": "message",
        "timestamp": timestamp,
        "entry": [
            {"fullUrl": f"{FULL_URL_BASE}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in resources
        ],
    }


@cache
def _bundle_model() -> Any:
    from fhir.resources.R4B.bundle import Bundle  # imported lazily: ~1 s of model building

    return Bundle


def validate_fhir(bundle: dict[str, Any], error: type[Exception]) -> None:
    """Raise ``error`` unless fhir.resources (R4B) parses ``bundle``: FHIR structure and
    datatypes, not code bindings or profiles (the builders check those)."""
    from pydantic import ValidationError

    try:
        _bundle_model().model_validate(bundle)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise error(
            f"not a valid FHIR Bundle ({exc.error_count()} errors), first at {where}: "
            f"{first['msg']}"
        ) from exc
    except Exception as exc:  # e.g. KeyError('R4.FooType') for an unknown resourceType
        raise error(f"not a valid FHIR Bundle: {exc!r}") from exc


def has_text(resource: dict[str, Any]) -> bool:
    """The resource carries a narrative (``text`` with a status other than empty, and a div)."""
    text = resource.get("text") or {}
    return bool(text.get("status") not in (None, "empty") and text.get("div"))


@dataclass(frozen=True)
class Message:
    """A message Bundle whose messaging rules held: its resources (the header first) and a
    resolver of references within it."""

    resources: list[dict[str, Any]]
    header: dict[str, Any]
    resolve: Callable[..., dict[str, Any]]
    sender: dict[str, Any]

    def of_type(self, resource_type: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r.get("resourceType") == resource_type]


def check_message(
    bundle: dict[str, Any], event_code: str, require: Callable[[object, str], None]
) -> Message:
    """The MedCom messaging rules every message obeys, each failure naming the rule
    (``require(ok, message)`` raises the builder's error): a message Bundle with a timestamp,
    the MessageHeader first, ``event_code``, a narrative, exactly one primary destination with a
    receiver Organization, a sender Organization and a source endpoint."""
    require(bundle.get("type") == "message", "Bundle.type must be 'message'")
    stamp = bundle.get("timestamp")
    require(INSTANT.match(stamp or ""), f"Bundle.timestamp {stamp!r} needs a time and UTC offset")
    resources = [e.get("resource") or {} for e in bundle.get("entry") or []]
    require(
        resources and resources[0].get("resourceType") == "MessageHeader",
        "entry[0] must be the MessageHeader",
    )
    by_ref = {f"{r.get('resourceType')}/{r.get('id')}": r for r in resources}

    def resolve(reference: dict[str, Any] | None, what: str, *types: str) -> dict[str, Any]:
        target = by_ref.get((reference or {}).get("reference", "")) or {}
        require(
            target.get("resourceType") in types,
            f"{what} must reference a {' or '.join(types)} in the Bundle",
        )
        return target

    header = resources[0]
    coding = header.get("eventCoding") or {}
    require(
        (coding.get("system"), coding.get("code")) == (EVENT_SYSTEM, event_code),
        f"MessageHeader.eventCoding must be {EVENT_SYSTEM}#{event_code}",
    )
    require(has_text(header), "MessageHeader.text (narrative) is required")
    destinations = header.get("destination") or []
    require(
        len(destinations) == 1,
        f"MessageHeader needs exactly one destination (cc is forbidden), has {len(destinations)}",
    )
    uses = [
        x.get("valueCoding", {}).get("code")
        for x in destinations[0].get("extension") or []
        if x.get("url") == EXT_DESTINATION_USE
    ]
    require(uses == ["primary"], f"MessageHeader.destination must have use 'primary', has {uses}")
    resolve(destinations[0].get("receiver"), "MessageHeader.destination.receiver", "Organization")
    sender = resolve(header.get("sender"), "MessageHeader.sender", "Organization")
    require(
        (header.get("source") or {}).get("endpoint"),
        "MessageHeader.source.endpoint is required (acknowledgements go there)",
    )
    return Message(resources, header, resolve, sender)
