"""Torch-free privacy accounting for dpfedlora.

Events describe releases, accountants (fastpld, prv, pld, rdp) turn them into (ε, δ) upper bounds,
:mod:`accounting.risk` turns the same privacy profile into bounds on membership-inference attacks
(TPR at a given FPR), calibration finds the noise for a target ε or a target attack risk, and the
ledger records every release before it happens. This package never imports torch or opacus (a
test checks it).

>>> from accounting import dpsgd_event, make_accountant
>>> event = dpsgd_event(noise_multiplier=1.0, sampling_rate=0.01, steps=1000)
>>> acc = make_accountant("rdp").compose(event)
>>> round(acc.epsilon(1e-5), 2)
2.1
"""

from .accountant import MAX_DELTA, Accountant
from .backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    available_backends,
    make_accountant,
    register_backend,
)
from .calibrate import Calibration, CalibrationError, calibrate_dpsgd, noise_multiplier_for
from .events import (
    EVENT_TYPES,
    Composed,
    Event,
    EventFormatError,
    Gaussian,
    NonPrivate,
    PoissonSampled,
    SelfComposed,
    dpsgd_event,
    event_from_json,
    event_to_json,
)
from .ledger import SCOPES, BudgetExceededError, Ledger, LedgerError, LedgerWarning, Record
from .risk import (
    DEFAULT_FPRS,
    Risk,
    attack_risk,
    equivalent_epsilon,
    noise_multiplier_for_risk,
    tpr_at_fpr,
)

__all__ = [
    "Accountant",
    "MAX_DELTA",
    "BACKENDS",
    "DEFAULT_BACKEND",
    "available_backends",
    "make_accountant",
    "register_backend",
    "Calibration",
    "CalibrationError",
    "calibrate_dpsgd",
    "noise_multiplier_for",
    "EVENT_TYPES",
    "Composed",
    "Event",
    "EventFormatError",
    "Gaussian",
    "NonPrivate",
    "PoissonSampled",
    "SelfComposed",
    "dpsgd_event",
    "event_from_json",
    "event_to_json",
    "SCOPES",
    "BudgetExceededError",
    "Ledger",
    "LedgerError",
    "LedgerWarning",
    "Record",
    "DEFAULT_FPRS",
    "Risk",
    "attack_risk",
    "equivalent_epsilon",
    "noise_multiplier_for_risk",
    "tpr_at_fpr",
]
