"""stafet: hospital events (HL7 v2 over MLLP, FHIR R4 over HTTP) to MedCom messages for every
party that must act on a child's referral, over Kafka, exactly once.

A message's path, folder by folder: ``connectors/sources`` (sockets → ingest topics),
``stafet/inbound`` (parsing into canonical events), ``streams`` (the stream stage), ``stafet/medcom``
(the MedCom messages it builds), ``connectors/sinks`` (out topics → the parties). The modules
directly in ``stafet/`` and ``stafet/kafka`` are shared by all of them; ``stafet/cli`` starts them.
"""
