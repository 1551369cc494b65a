"""FHIR R4 over HTTP: referrals, decisions and communications as resources (:mod:`.listener`),
MedCom messages and acknowledgements by ``$process-message`` (:mod:`.messaging`), and the API's
OpenAPI document (:mod:`.openapi`)."""
