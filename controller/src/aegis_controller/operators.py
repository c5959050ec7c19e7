"""Operators: who may use the operator routes. Each operator's newest client certificate
is recorded (its serial) when issued, and can be revoked; the API accepts an operator
certificate only when its serial is the recorded one and not revoked — the same check as
node certificates. Issue and revocation are ledger records."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import sqlalchemy as sa

from . import db, tables
from .errors import Invalid, NotFound, Unauthenticated
from .ledger import Kind, Ledger
from .pki import OPERATOR_CERT_HOURS, CertificateAuthority, cert_pem

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,62}")
#: The longest an operator certificate may live.
MAX_HOURS = 24 * 7
_o = tables.operators.c


@dataclass(frozen=True)
class OperatorRights:
    """What an operator may do in the console beyond reading: approve or reject held
    recovery jobs and approve or deny access requests (``may_approve``); ``groups`` are
    what the access policy sees of this operator (its approver roles)."""

    name: str
    may_approve: bool = False
    groups: tuple[str, ...] = ()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise Invalid(f"operator name {name!r} is not valid: 1 to 63 characters, letters, "
                      "digits, '.', '_', '@' or '-', starting with a letter or digit")
    return name


class Operators:
    """Operator certificates: issue (recording the serial), revoke, check."""

    def __init__(self, engine: sa.Engine, ledger: Ledger, ca: CertificateAuthority) -> None:
        self.engine = engine
        self.ledger = ledger
        self.ca = ca

    def issue(self, name: str, actor: str, hours: float = OPERATOR_CERT_HOURS, *,
              may_approve: bool = False, groups: tuple[str, ...] = ()
              ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) for ``name``; this certificate replaces (and so
        un-revokes) any earlier one of ``name``, and its console rights (``may_approve``,
        ``groups``) replace the earlier ones."""
        check_name(name)
        for group in groups:
            if not _NAME.fullmatch(group):
                raise Invalid(f"--group {group!r} is not valid: 1 to 63 characters, letters, "
                              "digits, '.', '_', '@' or '-'")
        if not 0 < hours <= MAX_HOURS:
            raise Invalid(f"operator certificate lifetime {hours} h is out of range: "
                          f"give 0 < hours <= {MAX_HOURS}")
        key, cert = self.ca.operator_cert(name, hours)
        serial = format(cert.serial_number, "x")
        row = {"cert_serial": serial, "issued_at": int(time.time()),
               "expires_at": int(cert.not_valid_after_utc.timestamp()), "revoked_at": None,
               "may_approve": may_approve, "groups": json.dumps(sorted(set(groups)))}
        with db.transaction(self.engine) as conn:
            if not conn.execute(tables.operators.update().where(_o.name == name)
                                .values(**row)).rowcount:
                conn.execute(tables.operators.insert().values(name=name, **row))
        self.ledger.append(Kind.ACCESS_GRANT, f"operator:{name}",
                           {"event": "operator_certificate_issued", "cert_serial": serial,
                            "expires_at": row["expires_at"], "may_approve": may_approve,
                            "groups": sorted(set(groups))}, actor=actor)
        return key, cert_pem(cert)

    def revoke(self, name: str, actor: str) -> dict[str, object]:
        """Refuse ``name``'s certificate from now on (until a new one is issued)."""
        check_name(name)
        now = int(time.time())
        with db.transaction(self.engine) as conn:
            row = conn.execute(sa.select(_o.cert_serial, _o.revoked_at)
                               .where(_o.name == name)).first()
            if row is None:
                raise NotFound(f"no operator {name!r}: issue one with "
                               "`aegis-controller operator-cert NAME`")
            if row.revoked_at is None:
                conn.execute(tables.operators.update().where(_o.name == name)
                             .values(revoked_at=now))
        if row.revoked_at is not None:
            return {"operator": name, "cert_serial": row.cert_serial,
                    "revoked_at": row.revoked_at}
        self.ledger.append(Kind.ACCESS_GRANT, f"operator:{name}",
                           {"event": "operator_revoked", "cert_serial": row.cert_serial},
                           actor=actor)
        return {"operator": name, "cert_serial": row.cert_serial, "revoked_at": now}

    def check(self, name: str, serial: int | None) -> OperatorRights:
        """Accept only ``name``'s newest, unrevoked certificate; its console rights."""
        with db.errors(self.engine), db.reader(self.engine) as conn:
            row = conn.execute(sa.select(_o.cert_serial, _o.revoked_at, _o.may_approve,
                                         _o.groups).where(_o.name == name)).first()
        if row is None or serial is None or int(row.cert_serial, 16) != serial:
            raise Unauthenticated(f"this certificate of operator {name!r} is not the one on "
                                  "record (replaced, or issued before operators were "
                                  "recorded): get a new one with `aegis-controller "
                                  "operator-cert NAME`")
        if row.revoked_at is not None:
            raise Unauthenticated(f"operator {name!r} was revoked: an administrator can "
                                  "issue a new certificate with `aegis-controller "
                                  "operator-cert NAME`")
        return OperatorRights(name, bool(row.may_approve), tuple(json.loads(row.groups)))
