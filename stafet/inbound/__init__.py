"""Parsing what the sources received into canonical events (``stafet.model``): HL7 v2 ADT and
REF/RRI, FHIR ServiceRequest / Task / Communication. Used by the sources (to answer a sender at
once) and by the stream stage (to normalise what is on the ingest topics)."""
