"""Benchmarks: speed, memory and accuracy measured side by side; results in docs/benchmarks.md.

* ``benchmark.py`` (the package :mod:`benchmarks.harness`): trainers against nnUNetTrainer at an equal budget;
* ``network_speed.py``: a network's training step and inference forward alone (no nnU-Net, no data);
* ``onnx_inference.py``: torch against ONNX Runtime for nnU-Net's prediction;
* ``conv_ab.py``: the batch-1 3D convolution routing, before and after;
* ``prior_box_dice.py``: LiteMedSAM's prior with ground-truth boxes on ACDC slices;
* ``presets/``: the SAM plans presets screened (docs/benchmark_log.md).
"""
