"""The steps a recovery settings file chooses (``backend``): the runner steps
(ansible-runner and Terraform on this controller), AWX job templates, or steps of your own
from a Python factory (``python.factory: module:callable``, called with the settings)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .settings import RecoverySettings, RecoverySettingsInvalid
from .steps import Steps, one_line

#: What every steps object must have (the :class:`~.steps.Steps` protocol).
STEP_METHODS = ("contain", "collect", "replace", "verify", "enroll", "dry_run")


def make_steps(settings: RecoverySettings, *, runs_dir: Path) -> Steps:
    """The steps of ``settings.backend``; :class:`~.settings.RecoverySettingsInvalid` when
    a python factory cannot be loaded or does not make steps."""
    if settings.backend == "awx":
        from .awx_steps import AwxSteps

        return AwxSteps(settings)
    if settings.backend == "python":
        return _from_factory(settings)
    from .runner_steps import RunnerSteps  # ansible-runner: only when used

    return RunnerSteps(settings, runs_dir=runs_dir)


def _from_factory(settings: RecoverySettings) -> Steps:
    assert settings.python is not None
    spec = settings.python.factory
    where = f"recovery settings {settings.path}: python.factory {spec!r}"
    module_name, _, attr = spec.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
        for name in attr.split("."):
            factory = getattr(factory, name)
    except ImportError as err:
        raise RecoverySettingsInvalid(f"{where}: cannot import {module_name} ({err}): check "
                                      "the name and that it is installed for this "
                                      "controller's Python") from None
    except AttributeError:
        raise RecoverySettingsInvalid(f"{where}: {module_name} has no {attr}") from None
    if not callable(factory):
        raise RecoverySettingsInvalid(f"{where}: {attr} is not callable")
    try:
        steps = factory(settings)
    except Exception as err:  # the factory's own failure, e.g. its options are wrong
        raise RecoverySettingsInvalid(f"{where} failed: {type(err).__name__}: "
                                      f"{one_line(str(err))}") from None
    missing = [m for m in STEP_METHODS if not callable(getattr(steps, m, None))]
    if missing:
        raise RecoverySettingsInvalid(f"{where} made a {type(steps).__name__} without "
                                      f"{', '.join(missing)}: it must return recovery steps "
                                      "(aegis_controller.recovery.steps.Steps)")
    return steps
