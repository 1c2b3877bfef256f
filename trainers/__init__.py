"""nnU-Net trainer classes; point nnUNet_extTrainer at this folder (`sam_nnunet env`)."""
