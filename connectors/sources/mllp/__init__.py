"""HL7 v2 over MLLP: the listener a hospital's integration engine sends ADT and referral messages
to (:mod:`.listener`), the ACKs it answers with (:mod:`.ack`), and a sender (:mod:`.client`)."""
