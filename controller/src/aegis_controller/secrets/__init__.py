"""Leased secrets, controller side: which node role a node's secrets come from, the gate
that hands a trusted node a response-wrapped AppRole secret_id (:mod:`.gate`), what the
node reported it fetched (:mod:`.store`) and revoking it without the node
(:mod:`.revocation`), through the controller's narrow Vault token (:mod:`.vault`),
configured by :mod:`.settings`."""
