"""nnunetv2-rndpo: Region-Normalized DPO fine-tuning for nnU-Net v2.

Import-light on purpose: nnU-Net imports every module of the ``nnUNet_extTrainer`` folder while it
looks up a trainer, so nothing heavy happens here.
"""

__version__ = "0.1.0"
