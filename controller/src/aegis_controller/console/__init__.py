"""The operator console, served by the controller under ``/console``: Fleet, Node,
Incidents, Recovery jobs, Access, Policies and Ledger pages rendered on the server with
Jinja2 (one small script of its own, ``static/live.js``, keeps them live), each also
JSON for ``Accept: application/json``. Operators open it with their client certificate;
only operators issued ``--approve`` see and may use the approve / reject / deny buttons.
See the README's *Operator console* section."""

from .routes import add_console
from .site import PREFIX

__all__ = ["PREFIX", "add_console"]
