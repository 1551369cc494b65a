"""Danish letters about a referral: the facts once (:func:`letter_text`) and a PDF for readers.

Everybody around a child who was referred to child and adolescent psychiatry must learn the same
decision: professionals as a MedCom CareCommunication (stafet.medcom.carecommunication, whose
payload is :meth:`LetterText.plain_text`), guardians and parties without a FHIR endpoint as a PDF
letter (:func:`render_letter_pdf`, sent by Digital Post). Keeping the wording here, as data, means
one place to review the Danish and one guarantee that no CPR number is ever printed: letters name
people, the transport addresses them.

The PDF is reportlab's built-in Helvetica (WinAnsiEncoding covers æ ø å and the Danish
punctuation) and ``invariant=1``, so the same letter always gives the same bytes.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal
from xml.sax.saxutils import escape

from stafet.cpr import mask_cpr
from stafet.errors import StafetError
from stafet.model import Contact, Party, ReferralEvent
from stafet.systems import CPR_SYSTEM, SOR_SYSTEM

LetterKind = Literal[
    "receipt",
    "status",
    "rejection",
    "assessment",
    "deadline",
    "forward",
    "modified",
    "cancelled",
    "contact",
]
Audience = Literal["professional", "guardian"]

#: Reasons for returning a referral named in seed 004 §5.2 (DOMAIN.md §5), in Danish.
REJECTION_REASONS: Final[dict[str, str]] = {
    "missing-ppv": "Der mangler en pædagogisk-psykologisk vurdering (PPV) fra PPR",
    "missing-information": "Der mangler oplysninger om kommunens hidtidige indsats for barnet",
    "outside-target-group": "Barnet vurderes ikke at være i børne- og "
    "ungdomspsykiatriens målgruppe",
}
#: Next step when the decision names none: a rejection must never end without one.
DEFAULT_NEXT_STEPS: Final[dict[str, str]] = {
    "missing-ppv": "PPR udarbejder en PPV; derefter kan barnet henvises igen med PPV'en vedlagt",
    "missing-information": "Henviser og kommunen beskriver, hvad kommunen allerede har sat i "
    "gang; derefter kan barnet henvises igen",
    "outside-target-group": "Henviser og kommunen finder sammen med familien et relevant tilbud "
    "i kommunen eller i almen praksis",
}
#: Paragraph templates per letter (status splits on the decision) and audience.
TEMPLATES: Final[dict[str, dict[str, Any]]] = {
    "receipt": {
        "subject": "Henvisning til børne- og ungdomspsykiatrien er modtaget",
        "decision": "Henvisningen er modtaget og afventer visitation",
        "professional": [
            "{unit} har {date} modtaget henvisningen af {child}. Henvisningen "
            "bliver visiteret, og alle parter får besked, når der er truffet en "
            "afgørelse."
        ],
        "guardian": [
            "Vi har {date} modtaget en henvisning af {child} til {unit}.",
            "Vi vurderer henvisningen og giver jer besked, når der er truffet en "
            "afgørelse. Børn og unge har ret til udredning inden for 30 dage, når det "
            "er fagligt muligt.",
        ],
    },
    "status-accepted": {
        "subject": "Statusskrivelse: henvisningen er visiteret til udredning",
        "decision": "Henvisningen er visiteret til udredning",
        "professional": [
            "{child} er {date} visiteret til udredning i {unit}. Familien får "
            "direkte besked om tid til første samtale."
        ],
        "guardian": [
            "{child} er {date} visiteret til udredning i {unit}.",
            "I får et brev med tid til første samtale.",
        ],
    },
    "status-forwarded": {
        "subject": "Statusskrivelse: henvisningen er videresendt",
        "decision": "Henvisningen er videresendt til {forwarded_to}",
        "professional": [
            "{unit} har {date} videresendt henvisningen af {child} til "
            "{forwarded_to}, som nu vurderer den."
        ],
        "guardian": [
            "Henvisningen af {child} er {date} sendt videre fra {unit} til "
            "{forwarded_to}, som nu vurderer den og giver jer besked."
        ],
    },
    "status-expired": {
        "subject": "Statusskrivelse: henvisningen er udløbet",
        "decision": "Henvisningen er udløbet og afsluttet",
        "professional": [
            "Henvisningen af {child} til {unit} er udløbet {date} og er afsluttet "
            "uden forløb. Skal barnet fortsat udredes, kræver det en ny henvisning.",
            "Det er nu {responsible}, der har bolden.",
        ],
        "guardian": [
            "Henvisningen af {child} til {unit} er udløbet {date} og er derfor afsluttet.",
            "Det er nu {responsible}, der har ansvaret for det videre forløb.",
        ],
    },
    "forward": {  # to the unit a referral was forwarded to
        "subject": "Henvisning videresendt til jer",
        "decision": "Henvisningen er videresendt til {forwarded_to}",
        "professional": [
            "{unit} har {date} videresendt henvisningen af {child} til jer "
            "({forwarded_to}). I skal nu visitere henvisningen; henviser har fået "
            "besked om, at den er sendt videre til jer."
        ],
        "guardian": [
            "Henvisningen af {child} er {date} sendt videre fra {unit} til {forwarded_to}."
        ],
    },
    "modified": {  # REF^I13 / ServiceRequest update: to every party already told
        "subject": "Henvisningen er ændret",
        "decision": "Henvisningen er ændret af henviser",
        "professional": [
            "Henvisningen af {child} til {unit} er ændret {date}. Den ændrede "
            "henvisning visiteres, og I får besked om afgørelsen."
        ],
        "guardian": [
            "Henvisningen af {child} til {unit} er ændret {date}. Vi giver jer besked, "
            "når der er truffet en afgørelse."
        ],
    },
    "cancelled": {  # REF^I14 / ServiceRequest revoked: to every party already told
        "subject": "Henvisningen er trukket tilbage",
        "decision": "Henvisningen er trukket tilbage",
        "professional": [
            "Henvisningen af {child} til {unit} er trukket tilbage {date} og er "
            "ikke længere aktiv i børne- og ungdomspsykiatrien.",
            "Det er nu {responsible}, der har bolden.",
        ],
        "guardian": [
            "Henvisningen af {child} til {unit} er trukket tilbage {date}.",
            "Det er nu {responsible}, der har ansvaret for det videre forløb.",
        ],
    },
    "contact": {  # the child's contact person at the unit changed: to every party
        "subject": "Ny kontaktperson i børne- og ungdomspsykiatrien",
        "decision": "Kontaktpersonen er skiftet til {contact}",
        "professional": [
            "Fra {date} er {contact} kontaktperson for {child} i {unit}. Kontakt "
            "fremover {contact} om barnets forløb."
        ],
        "guardian": [
            "Fra {date} er {contact} jeres kontaktperson for {child} i {unit}.",
            "I behøver ikke selv give de andre parter besked: henviser og kommunen "
            "har fået samme besked.",
        ],
    },
    "rejection": {
        "subject": "Henvisning til børne- og ungdomspsykiatrien er afvist",
        "decision": "Henvisningen er afvist",
        "professional": [
            "{unit} har {date} afvist henvisningen af {child}. Henvisningen er "
            "ikke længere aktiv i børne- og ungdomspsykiatrien.",
            "Det er nu {responsible}, der har bolden: ansvaret for, at barnet og "
            "familien får den rette hjælp. Alle parter omkring barnet har fået "
            "denne besked hver for sig.",
        ],
        "guardian": [
            "Henvisningen af {child} til {unit} er afvist {date}. Det betyder, at "
            "{child} ikke skal udredes i børne- og ungdomspsykiatrien nu.",
            "Det er nu {responsible}, der har ansvaret for det videre forløb. Vi har "
            "også givet henviser og kommunen besked, så I ikke selv skal fortælle det "
            "videre.",
        ],
    },
    "assessment": {
        "subject": "Statusskrivelse efter udredning i børne- og ungdomspsykiatrien",
        "decision": "Udredningen er afsluttet",
        "professional": [
            "Udredningen af {child} i {unit} er afsluttet {date}. Resultat og "
            "behandlingsplan fremgår af oversigten, så kommunen rettidigt kan "
            "sætte relevante indsatser i gang."
        ],
        "guardian": [
            "Udredningen af {child} i {unit} er afsluttet {date}. Her er en skriftlig "
            "opsummering af resultatet og behandlingsplanen."
        ],
    },
    "deadline": {
        "subject": "Udredningsfristen på 30 dage er overskredet",
        "decision": "Der er ikke truffet afgørelse inden for 30 dage",
        "professional": [
            "Henvisningen af {child} til {unit} har ikke fået en afgørelse inden "
            "for udrednings- og behandlingsgarantien på 30 dage (fristen udløb "
            "{date}). Ansvaret ligger fortsat hos {responsible}."
        ],
        "guardian": [
            "Vi har ikke truffet en afgørelse om henvisningen af {child} inden for 30 "
            "dage, som I har krav på. Det beklager vi.",
            "Kontakt os for at høre, hvad der sker nu, og hvilke muligheder I har, "
            "herunder udvidet frit sygehusvalg.",
        ],
    },
}
_MONTHS: Final = (
    "januar",
    "februar",
    "marts",
    "april",
    "maj",
    "juni",
    "juli",
    "august",
    "september",
    "oktober",
    "november",
    "december",
)
_PHONE: Final = re.compile(r"^\+?[0-9][0-9 -]{6,}[0-9]$")


class LetterError(StafetError, ValueError):
    """The event lacks a fact the letter cannot do without (the message goes to the DLQ)."""


@dataclass(frozen=True, slots=True)
class LetterText:
    """The facts of one letter in Danish, free of CPR numbers; FHIR payload and PDF share it."""

    kind: LetterKind
    audience: Audience
    subject: str  # heading of the letter and Communication.topic
    decision: str  # one line: what happened
    referral_id: str
    child_name: str
    sender_name: str
    sender_sor: str
    recipient_name: str
    date: str  # ISO 8601 with offset (the event time)
    date_text: str  # "12. marts 2024 kl. 10.15"
    facts: tuple[tuple[str, str], ...]  # (label, value), in reading order
    paragraphs: tuple[str, ...]
    contact: Contact
    reason_code: str | None = None
    reason_text: str | None = None

    def plain_text(self) -> str:
        """The letter as Communication.payload text (line breaks as \\n, as MedCom asks)."""
        facts = [f"{label}: {value}" for label, value in self.facts]
        return "\n".join(
            [
                self.subject,
                "",
                *facts,
                "",
                *self.paragraphs,
                "",
                "Med venlig hilsen",
                self.contact.name,
                self.sender_name,
            ]
        )


def danish_datetime(value: str) -> str:
    """'2024-03-12T10:15:00+01:00' -> '12. marts 2024 kl. 10.15' (in the event's own offset)."""
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise LetterError(f"event_time {value!r} is not ISO 8601") from exc
    return f"{t.day}. {_MONTHS[t.month - 1]} {t.year} kl. {t.hour:02d}.{t.minute:02d}"


def letter_text(
    event: ReferralEvent, recipient: Party, kind: LetterKind, *, contact: Contact | None = None
) -> LetterText:
    """The Danish letter for ``recipient``; ``contact`` is used when the event names none.

    Every inserted value is CPR-masked: a CPR typed into a clinician's note never reaches a
    letter. Missing facts a letter cannot do without raise LetterError.
    """
    child, decision, unit = event.child, event.decision, event.receiver
    if unit is None:
        raise LetterError("the referral event names no receiving psychiatry unit")
    if not child.family:
        raise LetterError("the child's family name is required (MedCom Patient.name)")
    audience: Audience = "guardian" if recipient.kind == "guardian" else "professional"
    key, status = str(kind), decision.status if decision else None
    if kind == "status":
        if status not in ("accepted", "forwarded", "expired"):
            raise LetterError(
                f"a status letter needs an accepted, forwarded or expired decision, not {status}"
            )
        key = f"status-{status}"
    elif kind == "rejection" and status != "rejected":
        raise LetterError(f"a rejection letter needs a rejected decision, not {status}")
    elif kind == "assessment" and event.assessment is None:
        raise LetterError("an assessment letter needs event.assessment")
    elif kind == "forward" and not (status == "forwarded" and decision and decision.forwarded_to):
        raise LetterError("a forward letter needs a forwarded decision naming the new unit")
    elif kind == "contact" and not (event.contact and event.contact.phone):
        raise LetterError("a contact letter needs event.contact with a phone number")
    # the decision's contact first, but only one that can be called (MedCom needs a phone)
    candidates = (
        event.contact,
        decision and decision.contact,
        event.assessment and event.assessment.contact,
        contact,
    )
    who = next((c for c in candidates if c and c.phone and _PHONE.match(c.phone)), None)
    if who is None:
        raise LetterError(
            f"a {kind} letter needs a contact with a phone number (MedCom payload authorContact)"
        )
    m = mask_cpr
    child_name = m(" ".join((*child.given, child.family)))
    unit_name = m(unit.name or "Børne- og ungdomspsykiatrien")
    date_text = danish_datetime(event.event_time)
    reason_code = reason_text = None
    responsible = m(decision.responsible) if decision and decision.responsible else unit_name
    if kind == "forward" and decision and decision.forwarded_to:
        responsible = m(decision.forwarded_to.name or decision.forwarded_to.identifier)
    if kind == "cancelled" and not (event.referrer and event.referrer.name):
        responsible = "henviser"  # the referrer withdrew it: the ball is theirs, named or not
    elif key in ("rejection", "status-expired", "cancelled") and not (
        decision and decision.responsible
    ):
        if event.referrer is None or not event.referrer.name:  # the ball goes back to them
            raise LetterError(
                f"a {key} letter needs decision.responsible (who picks up the "
                "ball) or a named referrer"
            )
        responsible = f"henviser, {m(event.referrer.name)}"
    forwarded_to = decision.forwarded_to if decision else None
    fields = {
        "child": child_name,
        "unit": unit_name,
        "date": f"den {date_text}",
        "responsible": responsible,
        "forwarded_to": m(forwarded_to.name or forwarded_to.identifier) if forwarded_to else "",
        "contact": m(who.name),
    }
    template = TEMPLATES[key]
    facts: list[tuple[str, str]] = [("Henvisning", m(event.referral_id)), ("Barn", child_name)]
    if audience == "professional" and child.birth_date:
        facts.append(("Født", _danish_date(child.birth_date)))
    unit_id = f"SOR {unit.identifier}" if unit.identifier_system == SOR_SYSTEM else unit.identifier
    facts += [
        ("Afgørelse", template["decision"].format(**fields)),
        ("Afvist af" if kind == "rejection" else "Afsender", f"{unit_name} ({unit_id})"),
        ("Tidspunkt", date_text),
    ]
    if kind == "rejection":
        assert decision is not None
        reason_code = decision.reason_code
        reason_text = REJECTION_REASONS.get(reason_code or "") or decision.reason_text
        if not reason_text:
            raise LetterError("a rejection needs a reason (reason_code or reason_text)")
        reason_text = m(reason_text)
        alternative = decision.alternative or DEFAULT_NEXT_STEPS.get(reason_code or "")
        if not alternative:
            raise LetterError("a rejection needs a suggested alternative")
        facts.append(
            ("Begrundelse", reason_text + (f" (kode {reason_code})" if reason_code else ""))
        )
        own = (decision.reason_text or "").strip()
        if own and own.casefold() != reason_text.casefold():  # the unit's words, kept as written
            facts.append(("Afdelingens begrundelse", m(own)))
        if decision.note:
            facts.append(("Bemærkning", m(decision.note)))
        facts += [
            ("Forslag til næste skridt", m(alternative)),
            ("Orienteret", ", ".join(_informed(event))),
        ]
    if kind == "assessment":
        assert event.assessment is not None
        facts.append(("Resultat af udredningen", m(event.assessment.summary)))
        if event.assessment.treatment_plan:
            facts.append(("Behandlingsplan", m(event.assessment.treatment_plan)))
    if kind == "status" and decision and decision.note:
        facts.append(("Bemærkning", m(decision.note)))
    facts.append(("Hvem har bolden nu", responsible))
    contact_line = m(f"{who.name}, tlf. {who.phone}" + (f", {who.email}" if who.email else ""))
    facts.append(("Kontakt", contact_line))
    return LetterText(
        kind=kind,
        audience=audience,
        subject=template["subject"],
        decision=template["decision"].format(**fields),
        referral_id=m(event.referral_id),
        child_name=child_name,
        sender_name=unit_name,
        sender_sor=unit.identifier,
        recipient_name=m(recipient.name or default_name(recipient)),
        date=event.event_time,
        date_text=date_text,
        facts=tuple(facts),
        paragraphs=tuple(p.format(**fields) for p in template[audience]),
        contact=Contact(name=m(who.name), phone=who.phone, email=who.email),
        reason_code=reason_code,
        reason_text=reason_text,
    )


def _danish_date(value: str) -> str:
    d = datetime.fromisoformat(value)
    return f"{d.day}. {_MONTHS[d.month - 1]} {d.year}"


def default_name(party: Party) -> str:
    return {
        "guardian": "forældremyndighedsindehaver",
        "municipality": "Bopælskommunen",
        "gp": "Henvisende læge",
        "ppr": "PPR",
        "family-department": "Familieafdelingen",
    }.get(party.kind, "Modtager")


def _informed(event: ReferralEvent) -> list[str]:
    """Who gets a letter about this rejection: every party knows that every party knows."""
    names = (
        [f"henviser ({event.referrer.name or event.referrer.identifier})"]
        if (event.referrer)
        else []
    )
    names.append(
        f"bopælskommunen ({event.child.municipality_code})"
        if event.child.municipality_code
        else "bopælskommunen"
    )
    names += [u.name or default_name(u) for u in event.municipal_units]
    if event.guardians:
        names.append("forældremyndighedsindehaverne")
    return [mask_cpr(n) for n in names]


#: The letter's frame around the shared facts, per audience ({name}, {child}, {unit} fields).
FRAMES: Final[dict[str, dict[str, str]]] = {
    "guardian": {
        "salutation": "Kære {name}",
        "footer": "Du får dette brev, fordi du har forældremyndigheden over {child}. Brevet "
        "indeholder ikke personnumre; spørgsmål kan stilles til kontaktpersonen.",
    },
    "professional": {
        "salutation": "Kære samarbejdspartner",
        "footer": "Brevet er sendt som brev, fordi modtageren ikke modtager MedCom-korrespondance.",
    },
}
RELATIONSHIPS: Final[dict[str, str]] = {
    "MTH": "mor",
    "FTH": "far",
    "GUARD": "forældremyndighedsindehaver",
}


def render_letter_pdf(text: LetterText, *, recipient: Party) -> bytes:
    """The letter as an A4 PDF: sender, date, addressee, subject, facts, body, contact box.

    Deterministic: reportlab's ``invariant`` fixes the creation date and document id. Raises
    LetterError if the letter would print a CPR number, or if a guardian would get a letter
    written for professionals.
    """
    if recipient.kind == "guardian" and text.audience != "guardian":
        raise LetterError("a guardian must get the guardian letter (letter_text for them)")
    strings = [
        text.subject,
        text.decision,
        text.referral_id,
        text.child_name,
        text.sender_name,
        text.recipient_name,
        text.contact.name,
        text.contact.phone or "",
        *text.paragraphs,
        *(f"{k} {v}" for k, v in text.facts),
    ]
    own_cpr = recipient.identifier if recipient.identifier_system == CPR_SYSTEM else None
    if any(mask_cpr(s) != s or (own_cpr and own_cpr in s) for s in strings):
        raise LetterError("the letter contains a CPR number")
    return _render(text, recipient)


def _render(text: LetterText, recipient: Party) -> bytes:
    from reportlab.lib import colors  # imported here: the FHIR path must not pay for reportlab
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    normal = ParagraphStyle(
        "stafet-normal", parent=styles["Normal"], fontName="Helvetica", fontSize=10.5, leading=14
    )
    small = ParagraphStyle(
        "stafet-small",
        parent=normal,
        fontSize=8.5,
        leading=11,
        textColor=colors.HexColor("#444444"),
    )
    bold = ParagraphStyle("stafet-bold", parent=normal, fontName="Helvetica-Bold")
    right = ParagraphStyle("stafet-right", parent=normal, alignment=2)  # TA_RIGHT
    heading = ParagraphStyle(
        "stafet-heading", parent=bold, fontSize=14, leading=18, spaceBefore=6, spaceAfter=6
    )

    def para(value: str, style: ParagraphStyle = normal) -> Paragraph:
        return Paragraph(escape(_winansi(value)), style)

    frame = FRAMES[text.audience]
    fields = {"name": text.recipient_name, "child": text.child_name, "unit": text.sender_name}
    addressee = text.recipient_name
    if recipient.kind == "guardian" and recipient.relationship in RELATIONSHIPS:
        addressee += f" ({RELATIONSHIPS[recipient.relationship]} til {text.child_name})"
    header = Table(
        [
            [para(text.sender_name, bold), para(text.date_text.split(" kl.")[0], right)],
            [para(f"SOR {text.sender_sor}", small), ""],
        ],
        colWidths=[116 * mm, 50 * mm],
        hAlign="LEFT",
    )
    header.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    )
    facts = Table(
        [
            [para(label, bold), para(value)] for label, value in text.facts if label != "Kontakt"
        ],  # the contact gets its own box below
        colWidths=[43 * mm, 123 * mm],
        hAlign="LEFT",
    )
    facts.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
            ]
        )
    )
    contact = [
        [para("Kontakt", bold)],
        [para(text.contact.name)],
        [para(f"Telefon: {text.contact.phone}")],
    ]
    if text.contact.email:
        contact.append([para(f"E-mail: {text.contact.email}")])
    box = Table(contact, colWidths=[166 * mm], hAlign="LEFT")
    box.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 0.8, colors.black),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#F2F2F2")),
            ]
        )
    )
    story: list[Any] = [
        header,
        Spacer(1, 8 * mm),
        para(f"Til: {addressee}"),
        Spacer(1, 6 * mm),
        para(text.subject, heading),
        para(frame["salutation"].format(**fields)),
        Spacer(1, 3 * mm),
    ]
    story += [x for p in text.paragraphs for x in (para(p), Spacer(1, 2 * mm))]
    story += [
        Spacer(1, 2 * mm),
        facts,
        Spacer(1, 6 * mm),
        box,
        Spacer(1, 8 * mm),
        para("Med venlig hilsen"),
        para(text.contact.name),
        para(text.sender_name),
        Spacer(1, 10 * mm),
        para(frame["footer"].format(**fields), small),
    ]
    buffer = io.BytesIO()
    SimpleDocTemplate(
        buffer,
        pagesize=A4,
        invariant=1,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=20 * mm,
        bottomMargin=20 * mm,
        title=_winansi(text.subject),
        author=_winansi(text.sender_name),
        subject=f"Henvisning {text.referral_id}",
        creator="stafet",
    ).build(story)
    return buffer.getvalue()


def _winansi(value: str) -> str:
    """Helvetica's WinAnsiEncoding (cp1252) has æøå; anything it lacks becomes '?'."""
    return value.encode("cp1252", "replace").decode("cp1252")
