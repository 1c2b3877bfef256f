"""The parts the SAM networks are made of, one paper component per module (shapes in each docstring): SAM's ViT
encoder and the TinyViT (``image_encoder``, ``light_encoder``, their ``registry``), ``lora``, ``adapters``, prompt
generators and decoders. See :mod:`sam_nnunet.modeling` for why the grouping is by kind."""
