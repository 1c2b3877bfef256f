"""A trainer's run settings: one table, one precedence (class < plans < environment).

Every setting has a default on the trainer class, may be set in the plans (a preset's ``"training"`` block, saved
as the configuration's ``sam_nnunet_training`` entry, keyed by trainer class: ``{"HSPSAMTrainer":
{"learning_rate": 1e-3}}`` applies to ``HSPSAMTrainer`` and its variants, not to other methods on the same plans),
and, where it has a variable, in the environment. A later source wins: environment over plans over class.
:func:`resolve_settings` returns the values together with where each came from, for the log.

=======================  =============================  ======================================================
setting                  environment                    what it is
=======================  =============================  ======================================================
learning_rate            --                             the optimiser's initial rate (class: ``base_learning_rate``)
weight_decay             --                             (class: ``base_weight_decay``)
supervised_outputs       --                             ``"all"`` (deep supervision) or ``"final"`` (output 0 only)
checkpoint               ``SAM_NNUNET_CHECKPOINT``      pretrained file: a path, or a named file (``litemedsam``);
                                                        plans take names only, as plans travel with models
freeze_pretrained        --                             false: full fine-tuning (nothing of the file frozen)
seed                     ``SAM_NNUNET_SEED``            seeds Python, NumPy and torch before the network is built
iterations_per_epoch     ``SAM_NNUNET_ITERATIONS_PER_EPOCH``      nnU-Net's 250 unless set
val_iterations_per_epoch ``SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH``  nnU-Net's 50 unless set
save_every               ``SAM_NNUNET_SAVE_EVERY``      epochs between ``checkpoint_latest.pth`` (default: at least
                                                        10 saves a run, at most nnU-Net's 50 epochs apart)
save_minutes             ``SAM_NNUNET_SAVE_MINUTES``    minutes between them, whichever comes first (default 15)
max_nonfinite_steps      ``SAM_NNUNET_MAX_NONFINITE``   non-finite steps in a row that stop a run (default 5)
=======================  =============================  ======================================================

A setting's class default of None means "nnU-Net's own value". A value that fails its check is an error naming the
source and what was expected; so is a plans key that is not a setting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from sam_nnunet.modeling.weights.checkpoint import CHECKPOINT_ENV
from sam_nnunet.modeling.weights.pretrained_files import PRETRAINED_FILES
from sam_nnunet.plans import TRAINING_KEY

SEED_ENV = "SAM_NNUNET_SEED"
ITERATIONS_ENV = "SAM_NNUNET_ITERATIONS_PER_EPOCH"
VAL_ITERATIONS_ENV = "SAM_NNUNET_VAL_ITERATIONS_PER_EPOCH"
SAVE_EVERY_ENV = "SAM_NNUNET_SAVE_EVERY"
SAVE_MINUTES_ENV = "SAM_NNUNET_SAVE_MINUTES"
MAX_NONFINITE_ENV = "SAM_NNUNET_MAX_NONFINITE"


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _to_int(text: str):
    return int(text) if text.strip().isdigit() else text


def _to_float(text: str):
    try:
        return float(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Setting:
    """One setting: its check, the words an error uses for it, and where it may come from."""

    name: str
    check: Callable[[Any], bool]
    expected: str
    #: the trainer class attribute holding the default (None: the setting's own name)
    class_attr: Optional[str] = None
    #: environment variable, and how its text becomes a value
    env: Optional[str] = None
    parse: Callable[[str], Any] = str
    #: whether a plans training block may set it
    in_plans: bool = True
    #: the check for a plans value when it is stricter than ``check`` (a checkpoint in plans must be a name)
    plans_check: Optional[Callable[[Any], bool]] = None
    plans_expected: str = ""


SETTINGS: Dict[str, Setting] = {s.name: s for s in (
    Setting("learning_rate", _positive_number, "a positive number", class_attr="base_learning_rate"),
    Setting("weight_decay", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
            "a number >= 0", class_attr="base_weight_decay"),
    Setting("supervised_outputs", lambda v: v in ("all", "final"), "'all' or 'final'"),
    Setting("checkpoint", lambda v: v is None or (isinstance(v, str) and v != ""), "a path or a named file",
            class_attr="pretrained_checkpoint", env=CHECKPOINT_ENV,
            plans_check=lambda v: v in PRETRAINED_FILES,
            plans_expected=f"a named pretrained file ({sorted(PRETRAINED_FILES)}), not a path: plans travel "
                           f"with models"),
    Setting("freeze_pretrained", lambda v: isinstance(v, bool), "true or false"),
    Setting("seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0",
            env=SEED_ENV, parse=_to_int, in_plans=False),
    Setting("iterations_per_epoch", _positive_int, "a positive integer", env=ITERATIONS_ENV, parse=_to_int),
    Setting("val_iterations_per_epoch", _positive_int, "a positive integer", env=VAL_ITERATIONS_ENV,
            parse=_to_int),
    Setting("save_every", _positive_int, "a positive integer", env=SAVE_EVERY_ENV, parse=_to_int),
    Setting("save_minutes", _positive_number, "a positive number", env=SAVE_MINUTES_ENV, parse=_to_float),
    Setting("max_nonfinite_steps", _positive_int, "a positive integer", env=MAX_NONFINITE_ENV, parse=_to_int),
)}


@dataclass(frozen=True)
class ResolvedSettings:
    """Values of some settings, and for each where it came from: ``"class"``, ``"plans"`` or ``"environment"``."""

    values: Dict[str, Any]
    sources: Dict[str, str]

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def given(self) -> Dict[str, Any]:
        """The settings that the plans or the environment set (for the log)."""
        return {k: v for k, v in self.values.items() if self.sources[k] != "class"}


def plans_block(trainer_cls: type, configuration: Optional[Mapping]) -> tuple:
    """(owner, settings) of the configuration's training block for the most specific class of ``trainer_cls``
    named there, or (None, {}). Keys that are not plans settings are an error."""
    block = (configuration or {}).get(TRAINING_KEY) or {}
    owner = next((c.__name__ for c in trainer_cls.__mro__ if c.__name__ in block), None)
    if owner is None:
        return None, {}
    given = block[owner]
    allowed = sorted(n for n, s in SETTINGS.items() if s.in_plans)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"plans {TRAINING_KEY}[{owner!r}]: unknown settings {unknown}; expected some of {allowed}")
    return owner, dict(given)


def resolve_settings(trainer_cls: type, configuration: Optional[Mapping], names: Iterable[str],
                     environ: Optional[Mapping[str, str]] = None) -> ResolvedSettings:
    """The settings ``names`` for ``trainer_cls`` on ``configuration`` (a plans configuration dict; None: no plans
    source), class < plans < environment. An empty environment variable counts as unset."""
    environ = os.environ if environ is None else environ
    owner, given = plans_block(trainer_cls, configuration)
    values, sources = {}, {}
    for name in names:
        setting = SETTINGS[name]
        value, source = getattr(trainer_cls, setting.class_attr or name, None), "class"
        if setting.in_plans and name in given:
            value, source = given[name], "plans"
            check = setting.plans_check or setting.check
            if not check(value):
                raise ValueError(f"plans {TRAINING_KEY}[{owner!r}][{name!r}] = {value!r} is not valid: expected "
                                 f"{setting.plans_expected or setting.expected}")
        if setting.env and environ.get(setting.env, "") != "":
            value, source = setting.parse(environ[setting.env]), "environment"
            if not setting.check(value):
                raise ValueError(f"{setting.env} must be {setting.expected}, got {environ[setting.env]!r}")
        values[name], sources[name] = value, source
    return ResolvedSettings(values, sources)
