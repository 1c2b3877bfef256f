"""What leaves a trained fold: the model for inference, its encoder as a checkpoint, ONNX models.

* :mod:`~sam_nnunet.export.model`: ``sam_nnunet export-model``, a model folder slimmed to what ``nnUNetPredictor``
  reads, and the helpers that load a fold's network or write a fold (``load_fold_network``, ``save_fold``).
* :mod:`~sam_nnunet.export.encoder`: ``sam_nnunet export-encoder``, a fold's image encoder under the keys of an
  official SAM checkpoint, for ``SAM_NNUNET_CHECKPOINT``.
* :mod:`~sam_nnunet.export.onnx_model`: ``sam_nnunet export-onnx``, folds as checked ONNX models.
* :mod:`~sam_nnunet.export.onnx_predictor`: ``sam_nnunet predict-onnx``, nnU-Net's prediction on ONNX Runtime.

The modules are imported by what uses them; importing this package loads none of them (nor torch).
"""
