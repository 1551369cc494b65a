"""The subscriber registry: validation names every problem; routing by topic and recipient."""

from __future__ import annotations

from pathlib import Path

import pytest

from stafet.subscribers import RegistryError, load_registry, parse_registry
from stafet.topics import OUT_LETTER, OUT_REFERRER, municipality_topic

GP = "urn:oid:1.2.208.176.1.4|123456"


def registry(*entries: dict, defaults: dict | None = None):
    return parse_registry({"defaults": defaults or {}, "subscriber": list(entries)})


REST_AARHUS = {"id": "aarhus", "name": "Aarhus", "party": "municipality", "municipality": "0751",
               "delivery": "rest", "url": "https://a.example/fhir", "secret_env": "SECRET_A"}
GP_REST = {"id": "gp-123456", "name": "GP", "party": "referrer", "topic": OUT_REFERRER,
           "recipients": [GP], "delivery": "rest", "url": "https://gp.example/",
           "secret_env": "SECRET_GP"}
LETTERS = {"id": "letters", "name": "Brev", "party": "letter-service", "delivery": "letter",
           "topic": OUT_LETTER}


def test_the_shipped_registry_is_valid():
    reg = load_registry(Path(__file__).parent.parent / "deploy" / "subscribers.toml")
    assert len(reg.all()) == 99  # 98 municipalities reading Kafka + the letter outbox
    assert reg.problems() == []


def test_routing_by_topic_and_recipient():
    reg = registry(REST_AARHUS, GP_REST, LETTERS)
    assert [s.id for s in reg.takers(municipality_topic("0751"), None)] == ["aarhus"]
    assert [s.id for s in reg.takers(OUT_REFERRER, GP)] == ["gp-123456"]
    assert reg.takers(OUT_REFERRER, "urn:oid:1.2.208.176.1.4|999999") == []  # → operator alert
    assert [s.id for s in reg.takers(OUT_LETTER, "urn:oid:1.2.208.176.1.2|x")] == ["letters"]
    # an unlisted municipality reads its own topic over Kafka by default
    [implicit] = reg.takers(municipality_topic("0101"), None)
    assert (implicit.id, implicit.delivery) == ("municipality-0101", "kafka")


def test_no_default_kafka_readers_when_switched_off():
    reg = registry(REST_AARHUS, defaults={"municipalities": "none"})
    assert reg.takers(municipality_topic("0101"), None) == []
    assert len(reg.all()) == 1


@pytest.mark.parametrize(("change", "message"), [
    ({"municipality": "9999"}, "not one of the 98"),
    ({"url": None}, "needs url and secret_env"),
    ({"delivery": "kafka", "municipality": None, "topic": OUT_REFERRER}, "shared by many"),
    ({"delivery": "letter"}, "letters are on out.letter"),
    ({"municipality": None}, "give municipality"),
    ({"recipients": ["123456"]}, "identifier system"),
    ({"id": "Has Spaces"}, "id"),
    ({"colour": "blue"}, "colour"),
    ({"topic": "events.encounter", "municipality": None}, "not an out.* topic"),
])
def test_invalid_entries_are_named(change, message):
    entry = {**REST_AARHUS, **change}
    with pytest.raises(RegistryError) as exc:
        registry(entry)
    assert message in str(exc.value)
    assert f"subscriber {entry['id']}" in str(exc.value), "the entry is named"


def test_duplicate_ids_and_unknown_sections_are_refused():
    with pytest.raises(RegistryError, match="used twice: aarhus"):
        registry(REST_AARHUS, REST_AARHUS)
    with pytest.raises(RegistryError, match="unknown sections"):
        parse_registry({"subscribers": []})


def test_missing_secret_is_a_problem_and_never_shown(monkeypatch):
    reg = registry(REST_AARHUS)
    monkeypatch.delenv("SECRET_A", raising=False)
    assert reg.problems() == ["subscriber aarhus: environment variable SECRET_A (its HMAC secret) "
                              "is not set"]
    monkeypatch.setenv("SECRET_A", "hemmelig")
    assert reg.problems() == []
    assert "hemmelig" not in repr(reg.by_id("aarhus").secret())


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[subscriber]\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_registry(bad)


def test_plain_http_only_on_loopback():
    with pytest.raises(RegistryError, match="use https"):
        registry({**REST_AARHUS, "url": "http://kommune.example/fhir"})
    assert registry({**REST_AARHUS, "url": "http://127.0.0.1:8099/fhir"})


def test_two_pushed_subscribers_may_not_take_the_same_records():
    with pytest.raises(RegistryError, match="would both be sent"):
        registry(GP_REST, {**GP_REST, "id": "gp-copy"})
    with pytest.raises(RegistryError, match="would both be sent"):
        registry(REST_AARHUS, {**REST_AARHUS, "id": "aarhus-ppr",
                               "recipients": ["urn:oid:1.2.208.176.1.1|6000000007510011"]})
    other_gp = {**GP_REST, "id": "gp-654321", "recipients": ["urn:oid:1.2.208.176.1.4|654321"]}
    assert len(registry(GP_REST, other_gp).subscribers) == 2
