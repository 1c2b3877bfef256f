"""Cross-validation and evaluation reports on top of nnU-Net v2's own commands.

* :mod:`~sam_nnunet.evaluation.crossval`: run the five ``nnUNetv2_train`` folds (skipping finished ones,
  resuming started ones), then ``nnUNetv2_find_best_configuration``;
* :mod:`~sam_nnunet.evaluation.metrics`: Dice (nnU-Net's ``compute_metrics``) and HD95 (MONAI) of one case;
* :mod:`~sam_nnunet.evaluation.report`: per-case CSV, Markdown summary and plots for one or two prediction folders;
* :mod:`~sam_nnunet.evaluation.plots`: the box plots and the comparison bar chart;
* :mod:`~sam_nnunet.evaluation.commands`: the ``crossval`` and ``report`` subcommands.
"""
