"""Plans presets (JSON) for SAM networks; see ``sam_nnunet.plans``."""
