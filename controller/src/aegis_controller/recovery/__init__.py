"""Rebuild-first recovery (issue 14): replace a quarantined node by a fresh, attested one.

:mod:`.states` is a recovery job's state machine, :mod:`.snapshot` the explicit inputs the
guard rails judge (the fleet and the jobs), :mod:`.guard` the guard rails and
:func:`~.guard.decide` (all pure). :mod:`.steps` is the contract between the engine and the
steps that act on the outside world (Terraform, ansible-runner). :mod:`.store` keeps the
jobs, their history and their row leases in the controller's database, every transition
on the ledger; :mod:`.engine` moves them on (``RecoveryEngine.tick`` and its background
thread; :func:`~.engine.start_recovery` for ``serve``). :mod:`.runner_steps` are the real
steps on this controller, :mod:`.awx_steps` the same steps as AWX job templates,
:mod:`.backends` picks one as the settings file says (``backend``) and :mod:`.settings`
reads that file (``serve --recovery-config``). The CLI is
``aegis-controller recovery`` (:mod:`aegis_controller.cli.recovery`).
"""
