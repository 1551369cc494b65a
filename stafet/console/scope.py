"""What a console user may see: an operator everything, a municipality its own residents and its
own deliveries.

A municipality's **residents** are the patient keys of the records on its own topic
``out.municipality.<code>`` (stafet sent it something about them, so they live there), plus the
keys of dead letters whose message names it as the municipality of residence. A municipality's
user sees, about its residents only: their trail (every event and every message stafet sent
about them, to whomever — "who holds the ball"), the dead letters about them, the audit lines of
their messages; and its own topic's counts and its own subscribers' delivery state. Anything
else is answered as if it did not exist (404), so a guessed URL learns nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from stafet.console.auth import User
from stafet.kafka.topics import municipality_topic


@dataclass(frozen=True, slots=True)
class Scope:
    user: User
    #: a municipality's residents (patient keys); ignored for an operator
    residents: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return self.user.is_operator

    @property
    def own_topic(self) -> str | None:
        return None if self.everything else municipality_topic(self.user.municipality or "")

    def sees_patient(self, patient_key: str | None) -> bool:
        return self.everything or bool(patient_key) and patient_key in self.residents

    def sees_topic(self, topic: str) -> bool:
        return self.everything or topic == self.own_topic

    def sees_dead_letter(self, municipality_code: str | None, patient_key: str | None) -> bool:
        if self.everything:
            return True
        return municipality_code == self.user.municipality or (
            municipality_code is None and self.sees_patient(patient_key)
        )

    def sees_audit_line(self, topic: str, patient_key: str | None) -> bool:
        return self.everything or topic == self.own_topic or self.sees_patient(patient_key)

    def sees_subscriber(self, topics: Iterable[str]) -> bool:
        """A subscriber's delivery state: a municipality sees the ones reading its topic."""
        return self.everything or self.own_topic in set(topics)

    @property
    def may_act(self) -> bool:
        """Resend or discard a dead letter: operators only."""
        return self.everything
