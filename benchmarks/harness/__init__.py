"""SAM trainers against nnUNetTrainer, side by side, in one process, on the same data and split.

    python benchmarks/benchmark.py --out runs/bench              # default: 5 min budget per trainer, ~30 min on 2 CPU cores
    python benchmarks/benchmark.py --out runs/acc60 --accuracy   # Dice at 60 min per trainer (all 80 ACDC patients)
    python benchmarks/benchmark.py --out runs/bench_quick --quick # seconds of training, for the test
    python benchmarks/benchmark.py --out runs/kvasir --dataset kvasir          # HSP-SAM's own task: polyps, 2D RGB
    python benchmarks/benchmark.py --out runs/transfer --checkpoint enc.pth         --trainers HSPSAMTrainer HSPSAMTrainer+pretrained                      # frozen pretrained encoder vs scratch

For every trainer (default ``nnUNetTrainer``, ``HSPSAMTrainer``, ``SelfPromptSAMTrainer``, ``PGSAMTrainer`` and
``ESPMedSAMTrainer``), built by nnU-Net's own
``get_trainer_from_args`` on the same plans (``nnUNetPlans_SAMcpu``: 2d, patch 128 x 128, batch 8)
and fold 0 of the same patient-grouped split, it measures, one trainer after the other so the
machine's noise hits all alike:

* the machine's speed: :func:`machine_probe_s`, a fixed convolution workload timed before the trainer is built,
  so that rows measured on different days (on machines of the same name but not the same speed) can be told apart;
* training step time: median and interquartile range of ``train_step`` (forward, loss, backward,
  optimiser step; data loading excluded) over ``--steps`` steps after ``--warmup``;
* sliding-window inference time per volume through ``nnUNetPredictor`` (nnU-Net's defaults: step
  0.5, Gaussian weighting, mirroring);
* peak memory: peak RSS of the process during training and during inference (``VmHWM``, reset
  before each phase); ``torch.cuda.max_memory_allocated`` on GPU;
* parameters, total and trainable, and the GFLOPs of one inference forward of a patch (torch's
  ``FlopCounterMode``);
* validation Dice per class on fold 0 (``--val-cases`` volumes; 0: all) after training for the same
  wall-clock budget (``--budget`` minutes), and HD95 per class (``sam_nnunet.evaluation.metrics``:
  MONAI, in pixels/mm of the images' spacing; left out if MONAI is not installed). Each trainer's
  schedule follows the budget's clock (:mod:`sam_nnunet.training.budget`, a trainer mixin whose ``run_training``
  the row calls): it is built for 1000 epochs and, before
  every step, set to the epoch 1000 * elapsed / budget, so poly decay (ESP-MedSAM's exponential decay)
  ends when the budget does and Self-Prompt-SAM's warm-up is the first 20 % of the run, whatever the
  step time turns out to be (data loading included; a step of nnU-Net's default plans takes a minute
  on 2 cores);
* the training curve: mean training loss per ``--iterations-per-epoch`` steps against wall-clock time.

``--accuracy`` is the realistic-budget mode: 60 minutes per trainer, all 80 shipped ACDC patients
(fold 0: 64 training, 16 validation patients, 32 volumes), every validation volume, and the rows
``nnUNetTrainer@nnUNetPlans`` (nnU-Net as it plans itself), ``nnUNetTrainer`` (on the SAM presets'
128 x 128 patch and batch 8), ``HSPSAMTrainer`` on the shipped CPU preset ``cpu_p8``
(``nnUNetPlans_SAMcpu_p8``, whose plans are written when missing, as for any shipped preset a row names), and
``SelfPromptSAMTrainer`` and ``SelfPromptSAMTrainer:3d_fullres`` on ``cpu_tiny`` (Self-Prompt-SAM's decoder
takes 16-pixel encoder patches only). Each
finished row is kept in ``--out``/``rows/``: the same command run again (after a crash, or in
pieces: ``--trainers`` a few at a time) measures only the rows still missing and builds the table
from all of them; a kept row measured with other settings is refused, never overwritten.

On CPU every row runs with subnormal floats flushed to zero (:func:`sam_nnunet.training.numerics.flush_denormal`, as
the SAM trainers' own runs do), nnUNetTrainer's too, so that no row's speed depends on the rows before it.

Datasets (``--dataset``): ``acdc`` (shipped ACDC cine-MRI, patient-grouped split, 3 classes) or
``kvasir`` (shipped Kvasir-SEG, RGB PNG through nnU-Net's natural-image reader, nnU-Net's own
random 5-fold split, one class). A trainer named ``NAME:3d_fullres`` trains that configuration
(nnU-Net's 3d_fullres data is preprocessed on first use). A trainer named ``NAME@PLANS`` runs on another plans of the same
preprocessed data instead of ``nnUNetPlans_SAMcpu``: ``nnUNetTrainer@nnUNetPlans`` is nnU-Net with its
own default 2d plans (its patch and batch), next to ``nnUNetTrainer`` on the SAM preset's. A trainer named
``NAME+pretrained`` is ``NAME`` with ``--checkpoint`` as its class's ``pretrained_checkpoint``: the trainer loads
and freezes it as it would SAM's weights (the papers' setting), as ``NAME_pretrained`` in its own output folder,
next to ``NAME`` from scratch. ``SAM_NNUNET_CHECKPOINT`` would override every row's checkpoint, so the harness refuses
to run with it set.

Writes ``results.json`` (raw numbers, the seed, the split, the machine), ``results.md`` (table with
ratios against nnUNetTrainer) and ``results.png`` (ratio bars; Dice per class) into ``--out``. The
dataset (shipped ACDC, ``--patients`` patients) is converted and preprocessed there first, unless
``--nnunet-raw/--nnunet-preprocessed`` point at a prepared one.

The package's modules, one job each: :mod:`~benchmarks.harness.specs` (datasets, default rows, row names),
:mod:`~benchmarks.harness.data` (conversion, plans, the low-data split), :mod:`~benchmarks.harness.machine` (speed
probe, peak memory), :mod:`~benchmarks.harness.measure` (one row: budgeted training, prediction, metrics),
:mod:`~benchmarks.harness.rows` (kept rows), :mod:`~benchmarks.harness.report` (table and plot) and
:mod:`~benchmarks.harness.cli`. ``python -m benchmarks.harness`` runs it as the script does.
"""
