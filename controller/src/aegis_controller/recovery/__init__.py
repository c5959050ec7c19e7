"""Rebuild-first recovery (issue 14): the decision logic only, so far.

:mod:`.states` is a recovery job's state machine, :mod:`.snapshot` the explicit inputs the
guard rails judge (the fleet and the jobs), :mod:`.guard` the guard rails and
:func:`~.guard.decide`. All of it is pure: no database, no API, no Terraform or
ansible-runner. Nothing in the controller calls it yet; the recovery engine that will
(durable jobs, steps run with ansible-runner and Terraform) is not built.
"""
