"""The SAM networks and their parts, grouped by kind, as dynamic-network-architectures groups its own.

* ``sam_nnunet.modeling.<method>``: the networks the trainers build, one module per paper: :mod:`.hsp_sam`,
  :mod:`.self_prompt_sam`, :mod:`.pg_sam`, :mod:`.esp_medsam`, and :mod:`.litemedsam` (LiteMedSAM as a promptable
  model, for the prior's own checks). They stay at this level on purpose: a trained model's plans.json records its
  network class by dotted path (``sam_nnunet.modeling.hsp_sam.HSPSAM``), so these paths are part of every model
  that was ever saved, and moving them would break ``nnUNetv2_predict`` on it.
* :mod:`.blocks`: the parts the networks are made of (encoders and their registry, LoRA, adapters, prompt
  generators, decoders), each one paper component with shape docstrings. Parts are shared across methods (SAM's
  ViT encoder and mask decoder serve all four), which is why the grouping is by kind, not by method.
* :mod:`.weights`: checkpoint I/O: SAM's and MedSAM's official layouts, file fingerprints, and the named pretrained
  files a package ships (``litemedsam``).
* :mod:`.interface` (the :class:`~.interface.SAMNetwork` protocol the trainers rely on) and :mod:`.common`
  (helpers every network uses).
"""
