"""Just-in-time access: users identified by an OIDC issuer's tokens (:mod:`.identity`),
the access policy (:mod:`.policy`) and the requests, approvals and grants it decides
(:mod:`.store`)."""
