"""SAMTrainerBase / HSPSAMTrainer in process, on the preprocessed ACDC crop."""
import copy
import inspect
import re

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import get_trainer_from_args
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from sam_nnunet.modeling.weights.checkpoint import CheckpointError
from sam_nnunet.training.sam_trainer import SAMTrainerBase

CPU = torch.device("cpu")


def trainer_names():
    import importlib.util

    from sam_nnunet import trainers_folder

    spec = importlib.util.spec_from_file_location("_hsp", f"{trainers_folder()}/HSPSAMTrainer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return sorted(n for n, c in vars(mod).items() if inspect.isclass(c) and issubclass(c, SAMTrainerBase)
                  and c is not SAMTrainerBase)


def test_nnunet_finds_every_trainer_by_name_and_none_clashes(acdc_env):
    names = trainer_names()
    assert {"HSPSAMTrainer", "HSPSAMTrainer_1epoch", "HSPSAMTrainer_5epochs", "HSPSAMTrainer_noDS"} <= set(names)
    for name in names:
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name and issubclass(cls, SAMTrainerBase), name  # not one of nnU-Net's own


@pytest.mark.parametrize("module", ["HSPSAMTrainer", "SelfPromptSAMTrainer", "PGSAMTrainer", "ESPMedSAMTrainer"])
def test_every_trainer_is_bound_to_its_own_name_written_out(module):
    """nnU-Net finds a trainer by the module attribute's name: every SAM trainer class of a trainer module is bound to
    the name it reports, and that name is written in the module, so that grep finds every class nnU-Net can load."""
    import importlib.util

    from sam_nnunet import trainers_folder

    path = f"{trainers_folder()}/{module}.py"
    spec = importlib.util.spec_from_file_location(f"_{module}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    source = open(path).read()
    trainers = {n: c for n, c in vars(mod).items() if inspect.isclass(c) and issubclass(c, SAMTrainerBase)
                and c is not SAMTrainerBase}
    assert {module, f"{module}_1epoch", f"{module}_250epochs"} <= set(trainers)
    for name, cls in trainers.items():
        assert cls.__name__ == name, f"{module}.{name} is the class {cls.__name__}"
        assert re.search(rf"\b{name}\b", source), f"{name} is not written out in {path}"


def test_trainer_module_does_not_import_networks(tmp_path):
    """A broken network module cannot hide the trainers: networks are imported only when built."""
    import subprocess
    import sys

    from sam_nnunet import trainers_folder

    code = (f"import sys; sys.path.insert(0, {trainers_folder()!r}); import HSPSAMTrainer; "
            "print('sam_nnunet.modeling.hsp_sam' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_epoch_variants_set_epochs(acdc_env):
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_5epochs", "nnUNetPlans_SAMcpu", device=CPU)
    assert t.num_epochs == 5 and t.__class__.__name__ == "HSPSAMTrainer_5epochs"


def test_stock_nnunet_plans_get_default_vit_b_at_the_plans_patch_size(acdc_env):
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer", "nnUNetPlans", device=CPU)
    arch = t.plans_manager.plans["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "sam_nnunet.modeling.hsp_sam.HSPSAM"
    assert arch["arch_kwargs"]["encoder"] == "vit_b"
    assert arch["arch_kwargs"]["img_size"] == list(t.configuration_manager.patch_size)
    assert arch["arch_kwargs"]["num_prompts"] == 3  # RV, MLV, LVC
    assert t.configuration_manager.network_arch_class_name == arch["network_class_name"]


def test_deep_supervision_mapping_loss_and_predictor_rebuild(acdc_env, monkeypatch):
    monkeypatch.setenv("SAM_NNUNET_ITERATIONS_PER_EPOCH", "7")
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_1epoch", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    assert t.num_iterations_per_epoch == 7
    net = t.network
    assert net.num_levels == 2  # vit_tiny has 2 global-attention blocks
    assert t._get_deep_supervision_scales() == [[1.0, 1.0], [1.0, 1.0]]
    assert isinstance(t.loss, DeepSupervisionWrapper)
    assert [round(w, 4) for w in t.loss.weight_factors] == [0.6667, 0.3333]
    assert (t.loss.loss.weight_dice, t.loss.loss.weight_ce) == (0.8, 0.2)
    assert isinstance(t.optimizer, torch.optim.AdamW)

    x = torch.randn(2, 1, 128, 128)
    target = [torch.randint(0, 4, (2, 1, 128, 128)).float() for _ in range(2)]
    loss = t.loss(net(x), target)
    assert torch.isfinite(loss)

    # what nnUNetv2_predict does: rebuild from the plans the trainer saved, without deep supervision
    rebuilt = type(t).build_network_architecture(t.plans_manager, t.configuration_manager, 1, 4,
                                                 enable_deep_supervision=False)
    rebuilt.load_state_dict(net.state_dict())
    t.set_deep_supervision_enabled(False)
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), net(x))


def test_no_checkpoint_trains_whole_encoder_and_says_so(acdc_env):
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_1epoch", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    assert all(p.requires_grad for p in t.network.parameters())
    assert "image encoder is randomly initialised and trained in full" in open(t.log_file).read()


def _plans_with(acdc_env, encoder):
    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = load_json(str(folder / "nnUNetPlans_SAMcpu.json"))
    plans = copy.deepcopy(plans)
    plans["configurations"]["2d"]["sam_nnunet"] = {"encoder": encoder}
    plans["continue_training"] = False  # nnU-Net 2.8 passes --c through the plans dict
    return plans, load_json(str(folder / "dataset.json"))


def test_sam_checkpoint_is_loaded_and_encoder_frozen_except_lora(acdc_env, monkeypatch, tmp_path, official_sam,
                                                                 small_encoder):
    _, sd = official_sam()
    path = tmp_path / "sam_vit_test.pth"
    torch.save(sd, path)
    monkeypatch.setenv("SAM_NNUNET_CHECKPOINT", str(path))
    plans, dataset_json = _plans_with(acdc_env, small_encoder)
    cls = recursive_find_trainer_class_by_name("HSPSAMTrainer_1epoch")
    t = cls(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json, device=CPU)
    t.initialize()
    enc = dict(t.network.encoder.named_parameters())
    assert all(p.requires_grad == ("lora_" in n) for n, p in enc.items())
    torch.testing.assert_close(enc["blocks.2.attn.qkv.weight"], sd["image_encoder.blocks.2.attn.qkv.weight"])
    assert all(p.requires_grad for n, p in t.network.named_parameters() if not n.startswith("encoder."))
    log = open(t.log_file).read()
    assert f"SAM checkpoint {path}" in log and "encoder.blocks.0.attn.qkv.lora_A" in log


@pytest.mark.parametrize("content, message", [(None, "not found"), (b"garbage", "corrupt, truncated")])
@pytest.mark.bad_input("checkpoints")
def test_bad_checkpoint_stops_the_run(acdc_env, monkeypatch, tmp_path, content, message):
    path = tmp_path / "sam.pth"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("SAM_NNUNET_CHECKPOINT", str(path))
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_1epoch", "nnUNetPlans_SAMcpu", device=CPU)
    with pytest.raises(CheckpointError, match=message):
        t.initialize()


@pytest.mark.fault("training")
def test_non_finite_weights_are_never_saved(acdc_env, tmp_path):
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_1epoch", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    with torch.no_grad():
        t.network.decoders[0].mask_tokens.weight[0, 0] = float("nan")
    target = tmp_path / "checkpoint_latest.pth"
    with pytest.raises(RuntimeError, match="non-finite"):
        t.save_checkpoint(str(target))
    assert not target.exists()


def test_no_ds_variant_puts_all_loss_on_level_one(acdc_env):
    t = get_trainer_from_args("27", "2d", 0, "HSPSAMTrainer_noDS", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    assert list(t.loss.weight_factors) == [1.0, 0.0]


def test_region_based_datasets_get_sigmoid_outputs_and_one_prompt_per_region(acdc_env):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss

    folder = acdc_env["nnUNet_preprocessed"] / "Dataset027_ACDC"
    plans = load_json(str(folder / "nnUNetPlans_SAMcpu.json"))
    plans["continue_training"] = False
    dataset_json = load_json(str(folder / "dataset.json"))
    dataset_json["labels"] = {"background": 0, "heart": [1, 2, 3], "LV": [3]}
    dataset_json["regions_class_order"] = [1, 3]
    cls = recursive_find_trainer_class_by_name("HSPSAMTrainer_1epoch")
    t = cls(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json, device=CPU)
    t.initialize()
    assert t.configuration_manager.network_arch_init_kwargs["num_prompts"] == 2
    assert t.network.num_classes == 2 and t.network.prompts[0].num_prompts == 2
    assert isinstance(t.loss.loss, DC_and_BCE_loss)
    assert (t.loss.loss.weight_dice, t.loss.loss.weight_ce) == (0.8, 0.2)


def test_unknown_plans_override_is_a_clear_error(acdc_env):
    plans, dataset_json = _plans_with(acdc_env, "vit_tiny")
    plans["configurations"]["2d"]["sam_nnunet"]["num_classes"] = 9
    cls = recursive_find_trainer_class_by_name("HSPSAMTrainer_1epoch")
    with pytest.raises(ValueError, match=r"\['num_classes'\].*lora_rank"):
        cls(plans=plans, configuration="2d", fold=0, dataset_json=dataset_json, device=CPU)


def test_plans_training_block_sets_the_optimiser_and_loss_of_the_named_trainer_and_its_variants(acdc_env):
    """A preset's "training" block: HSPSAMTrainer's settings reach HSPSAMTrainer_1epoch (a subclass) and its optimiser
    and deep-supervision weights; another method on the same plans keeps its own; a bad setting is a clear error."""
    plans, dataset_json = _plans_with(acdc_env, "vit_tiny")
    plans["configurations"]["2d"]["sam_nnunet_training"] = {
        "HSPSAMTrainer": {"learning_rate": 2e-3, "weight_decay": 0.05, "supervised_outputs": "final"}}
    t = recursive_find_trainer_class_by_name("HSPSAMTrainer_1epoch")(plans=copy.deepcopy(plans), configuration="2d",
                                                                     fold=0, dataset_json=dataset_json, device=CPU)
    t.initialize()
    assert t.optimizer.param_groups[0]["lr"] == 2e-3 and t.optimizer.param_groups[0]["weight_decay"] == 0.05
    assert list(t.loss.weight_factors) == [1.0, 0.0]
    other = recursive_find_trainer_class_by_name("PGSAMTrainer")(plans=copy.deepcopy(plans), configuration="2d",
                                                                 fold=0, dataset_json=dataset_json, device=CPU)
    assert other.initial_lr == type(other).base_learning_rate and other.supervised_outputs == "all"
    for bad, match in (({"learning_rate": -1}, r"\['learning_rate'\] = -1 is not valid"),
                       ({"lr": 1e-3}, r"unknown settings \['lr'\]; expected some of "
                                      r"\['checkpoint', 'freeze_pretrained', 'iterations_per_epoch', 'learning_rate'"),
                       ({"checkpoint": "/models/lite_medsam.pth"}, r"\['checkpoint'\] = '/models/lite_medsam.pth' is not "
                                                                   r"valid"),  # a name, not a path
                       ({"freeze_pretrained": "no"}, r"\['freeze_pretrained'\] = 'no' is not valid")):
        plans["configurations"]["2d"]["sam_nnunet_training"] = {"HSPSAMTrainer": bad}
        with pytest.raises(ValueError, match=match):
            recursive_find_trainer_class_by_name("HSPSAMTrainer")(plans=copy.deepcopy(plans), configuration="2d",
                                                                  fold=0, dataset_json=dataset_json, device=CPU)
    # a trainer with its paper's own deep-supervision weights refuses a setting it would ignore
    plans["configurations"]["2d"]["sam_nnunet_training"] = {"SelfPromptSAMTrainer": {"supervised_outputs": "final"}}
    with pytest.raises(ValueError, match="sets its own deep-supervision weights"):
        recursive_find_trainer_class_by_name("SelfPromptSAMTrainer")(plans=copy.deepcopy(plans), configuration="2d",
                                                                     fold=0, dataset_json=dataset_json, device=CPU)


TABLE5_ROWS = {  # trainer suffix: (qa_prompts, hierarchical, skip_connections, lora_rank)
    "FtSAM": (False, False, False, 0), "Ablation1": (True, False, False, 32), "Ablation2": (True, True, False, 32),
    "Ablation3": (True, True, True, 32), "Ablation4": (False, True, False, 32), "Ablation5": (False, True, True, 32),
    "noDS": (True, True, True, 32), "noQA": (False, True, True, 32), "noHierarchy": (True, False, False, 32),
    "noSkip": (True, True, False, 32)}


@pytest.mark.parametrize("suffix", TABLE5_ROWS)
def test_table5_rows_differ_only_in_their_switches_and_all_supervise_the_final_output(acdc_env, suffix):
    t = get_trainer_from_args("27", "2d", 0, f"HSPSAMTrainer_{suffix}", "nnUNetPlans_SAMcpu", device=CPU)
    t.initialize()
    k = t.configuration_manager.network_arch_init_kwargs
    assert (k["qa_prompts"], k["hierarchical"], k["skip_connections"], k["lora_rank"]) == TABLE5_ROWS[suffix]
    weights = list(t.loss.weight_factors)
    assert weights[0] == 1.0 and all(w == 0.0 for w in weights[1:])
    assert len(weights) == (2 if k["hierarchical"] else 1)  # vit_tiny: 2 global layers
    assert t.network.q_prompts_at == "blocks"


def test_recorded_arguments_are_used_only_by_the_trainer_that_recorded_them(acdc_env):
    """Plans saved by an HSPSAMTrainer run name HSPSAM with its arguments: a variant built from them keeps
    its own switches, and building trainers never changes the caller's plans dict."""
    from sam_nnunet.training.network_from_plans import RECORDED_BY_KEY

    plans, dataset_json = _plans_with(acdc_env, "vit_tiny")
    before = copy.deepcopy(plans)
    full = recursive_find_trainer_class_by_name("HSPSAMTrainer")(plans, "2d", 0, dataset_json, CPU)
    assert plans == before  # not mutated
    saved = dict(full.plans_manager.plans, continue_training=False)  # plans.json of the run, as the CLI passes it
    arch = saved["configurations"]["2d"]["architecture"]
    assert arch[RECORDED_BY_KEY] == "HSPSAMTrainer" and arch["arch_kwargs"]["qa_prompts"] is True
    no_qa = recursive_find_trainer_class_by_name("HSPSAMTrainer_noQA")(copy.deepcopy(saved), "2d", 0, dataset_json, CPU)
    assert no_qa.configuration_manager.network_arch_init_kwargs["qa_prompts"] is False
    again = recursive_find_trainer_class_by_name("HSPSAMTrainer")(copy.deepcopy(saved), "2d", 0, dataset_json, CPU)
    assert again.configuration_manager.network_arch_init_kwargs == arch["arch_kwargs"]
    # plans of runs recorded before the trainer name was (no key): their arguments, as then
    legacy = copy.deepcopy(saved)
    del legacy["configurations"]["2d"]["architecture"][RECORDED_BY_KEY]
    legacy["configurations"]["2d"]["architecture"]["arch_kwargs"]["lora_rank"] = 4
    old = recursive_find_trainer_class_by_name("HSPSAMTrainer")(legacy, "2d", 0, dataset_json, CPU)
    assert old.configuration_manager.network_arch_init_kwargs["lora_rank"] == 4
