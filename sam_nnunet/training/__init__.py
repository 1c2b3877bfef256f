"""nnU-Net trainer base shared by all SAM trainers."""
