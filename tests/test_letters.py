"""PDF letters: what a parent reads must say what happened, why, and whom to call, without a CPR.

Events and parties come from test_carecommunication (MedCom test patients, synthetic CPRs).
"""

from __future__ import annotations

import io
import re
from dataclasses import replace

import pytest
from pypdf import PdfReader

from stafet.medcom.letters import (
    REJECTION_REASONS,
    LetterError,
    letter_text,
    render_letter_pdf,
)
from stafet.model import Party
from tests.test_carecommunication import (
    CONTACT,
    DECISIONS,
    GP,
    GUARDIANS,
    KOMMUNE,
    REFERRAL,
    event,
)

CPR_SHAPED = re.compile(r"(?<!\d)\d{6}-?\d{4}(?!\d)")
CHILD_CPR = "0505209996"


def pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return "\n".join(page.extract_text() for page in reader.pages)


def squash(text: str) -> str:
    """Whitespace-free, so a phrase wrapped across lines still matches."""
    return re.sub(r"\s+", "", text)


def render(kind: str, recipient: Party) -> bytes:
    text = letter_text(event(kind), recipient, kind, contact=CONTACT)  # type: ignore[arg-type]
    return render_letter_pdf(text, recipient=recipient)


@pytest.mark.parametrize("parent", GUARDIANS, ids=lambda g: g.relationship)
@pytest.mark.parametrize("kind", DECISIONS)
def test_guardian_letter_names_child_decision_and_contact_but_no_cpr(
    kind: str, parent: Party
) -> None:
    pdf = render(kind, parent)
    text = letter_text(event(kind), parent, kind, contact=CONTACT)  # type: ignore[arg-type]
    extracted = pdf_text(pdf)
    flat = squash(extracted)
    who = event(kind).contact or CONTACT  # a contact change names its new contact
    for needed in (
        "Rikke Test Berggren",
        text.decision,
        text.subject,
        who.name,
        f"Telefon: {who.phone}",
        parent.name or "",
        REFERRAL,
    ):
        assert squash(needed) in flat, needed
    assert not CPR_SHAPED.search(extracted)
    for cpr in (CHILD_CPR, *(g.identifier for g in GUARDIANS)):
        assert cpr not in flat
    assert "Født" not in extracted  # a parent knows the birth date; the letter need not print it
    assert all(squash(p) in flat for p in text.paragraphs)


def test_rejection_letter_to_a_parent_explains_reason_alternative_and_who_has_the_ball() -> None:
    mother = GUARDIANS[1]
    flat = squash(pdf_text(render("rejection", mother)))
    for needed in (
        "Henvisning til børne- og ungdomspsykiatrien er afvist",
        "Henvisningen er afvist",
        REJECTION_REASONS["missing-ppv"],
        "Der er ikke beskrevet skoletrivsel",
        "PPR udarbejder en PPV",
        "PPR Aarhus sammen med egen læge",
        "12. marts 2024",
        "Kære Kirsten Test Berggren",
        "mor til Rikke Test Berggren",
    ):
        assert squash(needed) in flat, needed


def test_letter_bytes_are_deterministic_and_differ_per_recipient() -> None:
    first, second = render("rejection", GUARDIANS[0]), render("rejection", GUARDIANS[0])
    assert first == second and first.startswith(b"%PDF-")
    assert render("rejection", GUARDIANS[1]) != first
    info = PdfReader(io.BytesIO(first)).metadata
    assert info is not None and info["/CreationDate"].startswith("D:2000")  # invariant=1
    assert info["/Title"] == "Henvisning til børne- og ungdomspsykiatrien er afvist"


def test_danish_letters_survive_the_pdf_font() -> None:
    flat = squash(pdf_text(render("assessment", GUARDIANS[1])))
    assert squash("Udredningen viser angst; ingen tegn på autisme.") in flat
    assert all(ch in flat for ch in "æøå")


def test_referrer_without_fhir_endpoint_gets_the_professional_letter() -> None:
    paper_gp = replace(GP, has_fhir_endpoint=False)
    extracted = pdf_text(render("rejection", paper_gp))
    flat = squash(extracted)
    assert squash("Til: Lægehuset Testvej") in flat and "SOR 265161000016000" in extracted
    assert squash("Født 5. maj 2020") in flat  # name + birth date identify the child, not CPR
    assert not CPR_SHAPED.search(extracted)


def test_a_guardian_never_gets_the_professional_text() -> None:
    professional = letter_text(event("rejection"), KOMMUNE, "rejection")
    with pytest.raises(LetterError, match="guardian letter"):
        render_letter_pdf(professional, recipient=GUARDIANS[0])


def test_a_letter_that_would_print_a_cpr_is_refused() -> None:
    text = letter_text(event("rejection"), GUARDIANS[0], "rejection")
    leaky = replace(text, paragraphs=(*text.paragraphs, f"Barnets cpr er {CHILD_CPR}."))
    with pytest.raises(LetterError, match="CPR"):
        render_letter_pdf(leaky, recipient=GUARDIANS[0])
    own = replace(text, recipient_name=f"{GUARDIANS[0].name} {GUARDIANS[0].identifier}")
    with pytest.raises(LetterError, match="CPR"):
        render_letter_pdf(own, recipient=GUARDIANS[0])
