"""The CPU cost of each step of the ADT hot path, in one process, without Kafka.

    .venv/bin/python -m bench.hotpath [N]

Times, per message, what the MLLP listener and the worker do to one ADT message: python-hl7
parse + checks (``parse_hl7v2``, done twice: listener and ``normalize``), Avro encode, Avro decode,
``build_hospital_notification``, ``validate_bundle`` (fhir.resources), ``json.dumps``, one JSON log
line (structlog with CPR masking, as every process logs each message), and the hl7apy baseline
(a full hl7apy parse, which the hot path avoids). ``bench.run`` puts the result beside the
worker's measured CPU per message: the difference is what the engine and the Kafka client cost.
Also a cProfile of the whole chain, to name the functions the time goes to.
"""

from __future__ import annotations

import cProfile
import io
import json
import logging
import os
import pstats
import sys
import time
import uuid
from typing import Any

from bench.load import LoadGenerator

SECRET = "bench-hotpath"


def _time(fn: Any, items: list[Any]) -> tuple[float, list[Any]]:
    out = []
    t0 = time.process_time()
    for x in items:
        out.append(fn(x))
    return (time.process_time() - t0) / len(items), out


class _DictState(dict):
    def set(self, key: Any, value: Any) -> None:
        self[key] = value

    def delete(self, key: Any) -> None:
        self.pop(key, None)

    def exists(self, key: Any) -> bool:
        return key in self


def _worker_steps(raws: list[tuple[bytes, str]], *, carried: bool) -> float:
    """CPU seconds per message of ``normalize_hl7`` then ``notify``, per patient state; with
    ``carried`` the ingest record has the listener's canonical event (the normal case)."""
    from stafet.config import Settings
    from stafet.inbound.canonical import carry
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.kafka.topics import EVENTS_ENCOUNTER, H_CHARSET, H_EVENT_ID
    from stafet.streams.app import sampled
    from stafet.streams.normalize import normalize_hl7
    from stafet.streams.notify import notify
    from stafet.streams.records import Inbound

    settings = Settings(patient_key_secret=SECRET)
    validate = sampled(settings.validate_every)
    states: dict[bytes, _DictState] = {}
    records = []
    for offset, (raw, charset) in enumerate(raws):
        headers, key = {H_CHARSET: charset.encode()}, None
        if carried:
            event = parse_hl7v2(raw, secret=SECRET, default_charset=charset)
            headers.update({H_EVENT_ID: event.event_id.encode(), **dict(carry(event))})
            key = event.patient_key.encode()
        records.append(Inbound("ingest.hl7v2", 0, offset, key, raw, headers))
    t0 = time.process_time()
    for offset, record in enumerate(records):
        for out in normalize_hl7(record, settings):
            if out.topic != EVENTS_ENCOUNTER:
                continue
            event = Inbound(out.topic, 0, offset, out.key, out.value, out.headers)
            notify(
                event,
                states.setdefault(out.key or b"", _DictState()),
                settings,
                validate=validate(event),
            )
    return (time.process_time() - t0) / len(raws)


def measure(n: int = 2000, seed: int = 11) -> dict[str, Any]:
    from stafet.config import PROJECT_ROOT
    from stafet.directory import load_directory
    from stafet.inbound.canonical import carry
    from stafet.inbound.hl7v2_referral import parse_hl7v2
    from stafet.logging import configure_logging, get_logger
    from stafet.medcom.hospitalnotification import build_hospital_notification, validate_bundle
    from stafet.model import EncounterEvent
    from stafet.schemas.codec import decode, encode
    from stafet.streams.notify import with_known_leave

    directory = load_directory(PROJECT_ROOT / "deploy" / "directory.toml")

    def addressed(e: Any, **kw: Any) -> Any:  # the party directory's entries, as notify does
        return build_hospital_notification(
            e,
            directory.municipal_unit(e.patient.municipality_code),
            sender=directory.by_sor(e.sender.sor),
            **kw,
        )

    gen = LoadGenerator(seed=seed, run_id="H", referral_share=0.0, invalid_share=0.0)
    items = [next(gen) for _ in range(n)]
    raws = [(i.message, i.charset) for i in items]
    # warm caches (fhir.resources model classes, Avro schemas) outside the clock
    warm = parse_hl7v2(raws[0][0], secret=SECRET, default_charset=raws[0][1])
    validate_bundle(addressed(warm, previous_header_id=str(uuid.uuid4())))

    steps: dict[str, float] = {}
    steps["parse_hl7v2 (python-hl7 + checks)"], events = _time(
        lambda r: parse_hl7v2(r[0], secret=SECRET, default_charset=r[1]), raws
    )
    steps["Avro encode (to_record + fastavro)"], blobs = _time(
        lambda e: encode("encounter_event", e.to_record()), events
    )
    steps["Avro decode (fastavro + from_record)"], events2 = _time(
        lambda b: EncounterEvent.from_record(decode("encounter_event", b)), blobs
    )
    # a return from leave takes its leave start from the notify table (with_known_leave)
    events2 = [with_known_leave(e, e.encounter.start) for e in events2]
    prev = str(uuid.uuid4())  # RE_/AN_ messages point at an earlier one

    def build(e: Any) -> Any:
        try:
            return addressed(e, previous_header_id=prev)
        except ValueError:  # a message the worker would dead-letter without its table state
            return None

    steps["build_hospital_notification"], bundles = _time(build, events2)
    bundles = [b for b in bundles if b is not None]
    steps["validate_bundle (fhir.resources R4B + MedCom rules)"], _ = _time(
        validate_bundle, bundles
    )
    steps["json.dumps of the Bundle"], bodies = _time(
        lambda b: json.dumps(b, ensure_ascii=False, separators=(",", ":")).encode(), bundles
    )

    # one log line per message, as the services write them (JSON, CPR masking) — to /dev/null
    saved = sys.stderr
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    try:
        configure_logging("INFO", json=True)
        log = get_logger("bench.hotpath")
        steps["one JSON log line (structlog + CPR masking)"], _ = _time(
            lambda e: log.info(
                "notify.sent",
                topic="out.municipality.0101",
                code=e.notification_code,
                message_id=prev,
                event_id=e.event_id,
            ),
            events2,
        )
    finally:
        sys.stderr.close()
        sys.stderr = saved
        logging.getLogger().handlers.clear()

    baseline: dict[str, Any] = {}
    try:
        from hl7apy.parser import parse_message

        subset = [r[0].decode(r[1]) for r in raws[:200]]
        per, _ = _time(lambda t: parse_message(t, find_groups=True), subset)
        baseline = {"hl7apy parse_message (full, find_groups)": round(per * 1e6, 1)}
        baseline["ratio hl7apy / python-hl7 path"] = round(
            per / steps["parse_hl7v2 (python-hl7 + checks)"], 1
        )
    except Exception as exc:  # noqa: BLE001
        baseline = {"error": repr(exc)}

    listener = steps["parse_hl7v2 (python-hl7 + checks)"]  # no per-message INFO line any more
    # the worker's own steps as the engine runs them (streams/normalize + streams/notify, state in
    # a dict, validation sampled as configured): all the worker does per message but Kafka
    steps["worker steps: normalize_hl7 + notify (as run)"] = _worker_steps(raws, carried=True)
    steps["worker steps, parsing again (a replay after an upgrade)"] = _worker_steps(
        raws, carried=False
    )
    steps["listener: the canonical event for the ingest headers"], _ = _time(
        lambda e: carry(e), events
    )
    listener += steps["listener: the canonical event for the ingest headers"]
    worker = steps["worker steps: normalize_hl7 + notify (as run)"]

    # cProfile of the worker's chain for the top functions
    prof = cProfile.Profile()
    subset = raws[:500]
    prof.enable()
    for raw, cs in subset:
        e = parse_hl7v2(raw, secret=SECRET, default_charset=cs)
        e = EncounterEvent.from_record(
            decode("encounter_event", encode("encounter_event", e.to_record()))
        )
        e = with_known_leave(e, e.encounter.start)
        try:
            b = addressed(e, previous_header_id=prev)
        except ValueError:
            continue
        validate_bundle(b)
        json.dumps(b, ensure_ascii=False, separators=(",", ":"))
    prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(25)
    top = []
    for (file, line, name), (_cc, nc, tt, ct, _) in sorted(
        stats.stats.items(), key=lambda kv: -kv[1][3]
    )[:40]:
        short = file.split("site-packages/")[-1].split("/work/main/")[-1]
        top.append(
            {
                "function": f"{name} ({short}:{line})",
                "cumulative_us_per_msg": round(ct / len(subset) * 1e6, 1),
                "self_us_per_msg": round(tt / len(subset) * 1e6, 1),
                "calls_per_msg": round(nc / len(subset), 1),
            }
        )
    return {
        "messages": n,
        "us_per_message": {k: round(v * 1e6, 1) for k, v in steps.items()},
        "listener_hot_path_us": round(listener * 1e6, 1),
        "worker_hot_path_us": round(worker * 1e6, 1),
        "worker_hot_path_max_per_s_one_core": round(1 / worker),
        "baseline": baseline,
        "cprofile_top_cumulative": top,
    }


if __name__ == "__main__":
    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "cprofile_top_cumulative"},
            indent=1,
            ensure_ascii=False,
        )
    )
    for row in result["cprofile_top_cumulative"][:25]:
        print(
            f"{row['cumulative_us_per_msg']:>9} µs cum {row['self_us_per_msg']:>8} µs self "
            f"{row['calls_per_msg']:>7} calls  {row['function']}"
        )
