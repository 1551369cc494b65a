"""The MedCom messages stafet sends and reads: HospitalNotification, CareCommunication,
Acknowledgement, the Danish letters, and the addressing (SOR + EAN) a MedCom receiver routes on.
Pure functions of canonical events: deterministic ids, no I/O."""
