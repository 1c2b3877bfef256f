"""Checkpoint I/O: reading SAM's and MedSAM's official layouts into the networks (``checkpoint``), fingerprints and
file checks (``checkpoint_files``), and the named pretrained files that packages ship (``pretrained_files``)."""
