"""Sinks: each subscriber's out topic delivered to it (REST hook or letter outbox), retried,
acknowledged (MedCom Acknowledgement), resent, replayed and audited — :mod:`.delivery` is the
process, :mod:`.channels` the ways out, :mod:`.acknowledgements` what is still owed an ack."""
