"""The stream stage (quixstreams, exactly-once): ingest → canonical events → MedCom messages per
recipient, the referral state machine and its deadlines. Steps are pure functions of a record;
:mod:`.app` wires them to topics."""
