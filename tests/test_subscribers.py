"""The subscriber registry: validation names every problem; routing by topic and recipient."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stafet.cli import main
from stafet.kafka.topics import OUT_LETTER, OUT_REFERRER, municipality_topic
from stafet.subscribers import RegistryError, load_registry, parse_registry, secret_key

from .webhook_secrets import whsec

GP = "urn:oid:1.2.208.176.1.4|123456"


def registry(*entries: dict, defaults: dict | None = None):
    return parse_registry({"defaults": defaults or {}, "subscriber": list(entries)})


REST_AARHUS = {
    "id": "aarhus",
    "name": "Aarhus",
    "party": "municipality",
    "municipality": "0751",
    "delivery": "rest",
    "url": "https://a.example/fhir",
    "secret_env": "SECRET_A",
}
GP_REST = {
    "id": "gp-123456",
    "name": "GP",
    "party": "referrer",
    "topic": OUT_REFERRER,
    "recipients": [GP],
    "delivery": "rest",
    "url": "https://gp.example/",
    "secret_env": "SECRET_GP",
}
AARHUS_SECRET, GP_SECRET = whsec("aarhus"), whsec("gp")
LETTERS = {
    "id": "letters",
    "name": "Brev",
    "party": "letter-service",
    "delivery": "letter",
    "topic": OUT_LETTER,
}


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"municipality": "9999"}, "not one of the 98"),
        ({"url": None}, "needs url and secret_env"),
        ({"delivery": "kafka", "municipality": None, "topic": OUT_REFERRER}, "shared by many"),
        ({"delivery": "letter"}, "letters are on out.letter"),
        ({"municipality": None}, "give municipality"),
        ({"recipients": ["123456"]}, "identifier system"),
        ({"id": "Has Spaces"}, "id"),
        ({"colour": "blue"}, "colour"),
        ({"topic": "events.encounter", "municipality": None}, "not an out.* topic"),
    ],
)
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


@pytest.fixture
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No subscriber secret in the environment and no secrets directory."""
    for name in ("SECRET_A", "SECRET_GP", "STAFET_SECRETS_DIR", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_missing_secret_is_a_problem_and_never_shown(no_secrets):
    reg = registry(REST_AARHUS)
    assert reg.problems() == [
        "subscriber aarhus: its webhook secret SECRET_A is not set "
        "(neither an environment variable nor a file in "
        "STAFET_SECRETS_DIR / $CREDENTIALS_DIRECTORY)"
    ]
    no_secrets.setenv("SECRET_A", AARHUS_SECRET)
    assert reg.problems() == []
    assert AARHUS_SECRET not in repr(reg.by_id("aarhus").secret())


@pytest.mark.parametrize(
    "secret, what",
    [
        ("hemmelig-aarhus-2026", "must start with whsec_"),
        ("whsec_hemmelig aarhus!", "the part after whsec_ is not valid base64"),
        ("whsec_" + base64.b64encode(b"k" * 16).decode(), "it decodes to 16 bytes; at least 24"),
    ],
)
def test_a_secret_that_is_no_webhook_secret_is_named_never_shown(no_secrets, secret, what):
    no_secrets.setenv("SECRET_A", secret)
    no_secrets.setenv("SECRET_GP", GP_SECRET)
    [problem] = registry(REST_AARHUS, GP_REST).problems()  # the GP's good secret: no problem
    assert (
        problem.startswith(
            "subscriber aarhus: the webhook secret in environment variable SECRET_A: "
        )
        and what in problem
    )
    assert secret not in problem and secret[6:] not in problem


def test_a_secret_may_be_a_file_in_the_secrets_dir(no_secrets, tmp_path):
    reg = registry(REST_AARHUS)
    (tmp_path / "SECRET_A").write_text(AARHUS_SECRET + "\n", encoding="utf-8")  # a mounted Secret
    for variable in ("STAFET_SECRETS_DIR", "CREDENTIALS_DIRECTORY"):  # or systemd's credentials
        no_secrets.setenv(variable, str(tmp_path))
        assert reg.problems() == []
        assert reg.by_id("aarhus").secret().get_secret_value() == AARHUS_SECRET
        no_secrets.delenv(variable)
    no_secrets.setenv("STAFET_SECRETS_DIR", str(tmp_path))
    no_secrets.setenv("SECRET_A", GP_SECRET)  # the environment still works, and comes first
    assert reg.by_id("aarhus").secret().get_secret_value() == GP_SECRET
    no_secrets.delenv("SECRET_A")
    (tmp_path / "SECRET_A").write_text("too-short", encoding="utf-8")
    [problem] = reg.problems()
    assert "the webhook secret in secret file SECRET_A: " in problem and "too-short" not in problem


def test_subscribers_check_names_a_bad_secret_and_exits_1(no_secrets, tmp_path):
    path = tmp_path / "subscribers.toml"
    path.write_text(
        "[[subscriber]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in REST_AARHUS.items()),
        encoding="utf-8",
    )
    no_secrets.setenv("SECRET_A", "hemmelig-aarhus-2026")
    result = CliRunner().invoke(main, ["subscribers", "check", "--registry", str(path)])
    assert result.exit_code == 1
    assert (
        "problem: subscriber aarhus: the webhook secret in environment variable SECRET_A: "
        "it is not a Standard Webhooks secret" in result.output
    )
    assert "hemmelig-aarhus-2026" not in result.output
    no_secrets.setenv("SECRET_A", AARHUS_SECRET)
    result = CliRunner().invoke(main, ["subscribers", "check", "--registry", str(path)])
    assert result.exit_code == 0 and "problem" not in result.output
    assert AARHUS_SECRET not in result.output


def test_subscribers_new_secret_prints_a_valid_one():
    result = CliRunner().invoke(main, ["subscribers", "new-secret"])
    assert result.exit_code == 0
    assert len(secret_key(result.output.strip())) == 32


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
        registry(
            REST_AARHUS,
            {
                **REST_AARHUS,
                "id": "aarhus-ppr",
                "recipients": ["urn:oid:1.2.208.176.1.1|6000000007510011"],
            },
        )
    other_gp = {**GP_REST, "id": "gp-654321", "recipients": ["urn:oid:1.2.208.176.1.4|654321"]}
    assert len(registry(GP_REST, other_gp).subscribers) == 2
