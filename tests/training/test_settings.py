"""Run settings: class < plans < environment, each checked, each with its source."""
import pytest

from sam_nnunet.plans import TRAINING_KEY
from sam_nnunet.training.settings import SETTINGS, resolve_settings


class Base:
    base_learning_rate = 3e-4
    base_weight_decay = 1e-2
    supervised_outputs = "all"
    pretrained_checkpoint = None
    freeze_pretrained = True
    save_minutes = 15.0


class Method(Base):
    pass


class MethodVariant(Method):
    base_learning_rate = 1e-4


def conf(**block):
    return {TRAINING_KEY: block}


def test_a_later_source_wins_class_then_plans_then_environment():
    names = ("learning_rate", "weight_decay", "checkpoint", "save_minutes", "iterations_per_epoch")
    plans = conf(Method={"learning_rate": 2e-3, "checkpoint": "litemedsam", "save_minutes": 5})
    env = {"SAM_NNUNET_CHECKPOINT": "/models/sam.pth", "SAM_NNUNET_SAVE_MINUTES": "0.5",
           "SAM_NNUNET_ITERATIONS_PER_EPOCH": ""}  # empty: unset
    s = resolve_settings(MethodVariant, plans, names, env)
    assert s.values == {"learning_rate": 2e-3, "weight_decay": 1e-2, "checkpoint": "/models/sam.pth",
                        "save_minutes": 0.5, "iterations_per_epoch": None}
    assert s.sources == {"learning_rate": "plans", "weight_decay": "class", "checkpoint": "environment",
                         "save_minutes": "environment", "iterations_per_epoch": "class"}
    assert s.given() == {"learning_rate": 2e-3, "checkpoint": "/models/sam.pth", "save_minutes": 0.5}
    # without plans or environment, the class's own default (the variant's, not the base's)
    assert resolve_settings(MethodVariant, None, names, {}).values["learning_rate"] == 1e-4
    # a block for another method does not apply
    assert resolve_settings(Base, plans, names, {}).sources["learning_rate"] == "class"


def test_bad_values_name_their_source_and_what_was_expected():
    with pytest.raises(ValueError, match=r"SAM_NNUNET_SAVE_EVERY must be a positive integer, got '0'"):
        resolve_settings(Base, None, ("save_every",), {"SAM_NNUNET_SAVE_EVERY": "0"})
    with pytest.raises(ValueError, match=r"SAM_NNUNET_SAVE_MINUTES must be a positive number, got 'soon'"):
        resolve_settings(Base, None, ("save_minutes",), {"SAM_NNUNET_SAVE_MINUTES": "soon"})
    with pytest.raises(ValueError, match=r"SAM_NNUNET_SEED must be an integer >= 0, got '-1'"):
        resolve_settings(Base, None, ("seed",), {"SAM_NNUNET_SEED": "-1"})
    with pytest.raises(ValueError, match=r"\['checkpoint'\] = '/models/lite_medsam.pth' is not valid: expected a "
                                         r"named pretrained file"):
        resolve_settings(Base, conf(Base={"checkpoint": "/models/lite_medsam.pth"}), ("checkpoint",), {})
    with pytest.raises(ValueError, match=r"unknown settings \['seed'\]"):  # the environment's alone
        resolve_settings(Base, conf(Base={"seed": 1}), ("learning_rate",), {})
    with pytest.raises(ValueError, match=r"\['learning_rate'\] = True is not valid"):
        resolve_settings(Base, conf(Base={"learning_rate": True}), ("learning_rate",), {})


def test_every_setting_with_a_variable_is_named_in_the_module_table():
    import sam_nnunet.training.settings as module

    for setting in SETTINGS.values():
        assert setting.name in module.__doc__
        if setting.env:
            assert setting.env in module.__doc__
