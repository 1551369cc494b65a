"""How many of the Bundles stafet writes a MedCom receiver would accept, on a national mix.

Runs the worker's own steps (normalize → notify / referrals, state per patient in a dict, the
party directory ``deploy/directory.toml``) over ``N`` messages of the benchmark's synthetic load
(HL7 v2 ADT plus REF/RRI referrals, every municipality) and checks every Bundle written with the
checks of ``validate_bundle`` / ``validate_care_communication`` (fhir.resources + the MedCom
rules) and ``organization_problems`` (SOR-ID + EAN-ID on sender and receiver, GLN check digits,
DK-core's mandatory identifier, the destination endpoint). Prints one JSON line of figures.

    .venv/bin/python -m bench.conformance [N]     # default 1500
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from bench.hotpath import SECRET, _DictState
from bench.load import LoadGenerator


def measure(n: int = 1500, seed: int = 9) -> dict[str, Any]:
    from stafet.config import Settings
    from stafet.kafka.topics import EVENTS_ENCOUNTER, EVENTS_REFERRAL, H_CHARSET
    from stafet.medcom.addressing import organization_problems
    from stafet.medcom.carecommunication import validate_care_communication
    from stafet.medcom.hospitalnotification import validate_bundle
    from stafet.streams.normalize import normalize_hl7
    from stafet.streams.notify import notify
    from stafet.streams.records import Inbound
    from stafet.streams.referrals import ReferralStep

    settings = Settings(patient_key_secret=SECRET, validate_every=1)
    step = ReferralStep(settings)
    gen = LoadGenerator(seed=seed, run_id="C", referral_share=0.08, invalid_share=0.0)
    states: dict[bytes, _DictState] = {}
    counts: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for offset in range(n):
        item = next(gen)
        record = Inbound(
            "ingest.hl7v2", 0, offset, None, item.message, {H_CHARSET: item.charset.encode()}
        )
        for event in normalize_hl7(record, settings):
            inbound = Inbound(event.topic, 0, offset, event.key, event.value, event.headers)
            state = states.setdefault(event.key or b"", _DictState())
            if event.topic == EVENTS_ENCOUNTER:
                outputs = notify(inbound, state, settings)
            elif event.topic == EVENTS_REFERRAL:
                outputs = step(inbound, state)
            else:
                counts[f"input dead-lettered ({event.topic})"] += 1
                continue
            for out in outputs:
                if not out.topic.startswith(("out.municipality.", "out.referrer")):
                    counts[f"other output ({out.topic})"] += 1
                    continue
                bundle = json.loads(out.value or b"{}")
                kind = (
                    "HospitalNotification"
                    if out.headers.get("stafet.kind") == b"hospital-notification"
                    else "CareCommunication"
                )
                counts[kind] += 1
                problems = organization_problems(bundle)
                try:
                    (
                        validate_bundle
                        if kind == "HospitalNotification"
                        else validate_care_communication
                    )(bundle)
                except ValueError as exc:
                    problems.append(str(exc))
                if problems:
                    failures[problems[0][:120]] += 1
                else:
                    counts[f"{kind} conform"] += 1
    return {
        "messages": n,
        **dict(sorted(counts.items())),
        "not conform": sum(failures.values()),
        "first problems": dict(failures.most_common(5)),
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1500), ensure_ascii=False))
