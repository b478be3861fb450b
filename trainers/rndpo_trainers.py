"""Thin re-exports for nnU-Net's trainer lookup: ``export nnUNet_extTrainer=<repo>/trainers``.

nnU-Net imports every module of this folder and then drops it from ``sys.modules``, so the classes
live in the installed package ``nnunetv2_rndpo`` (picklable, importable by spawn workers). Named variants
(``nnUNetTrainerRNDPO_<name>`` from ``$nnUNet_rndpo_variants/<name>.json``) are answered by ``__getattr__``.
"""

from nnunetv2_rndpo.trainer import (
    nnUNetTrainer_cpuBase,
    nnUNetTrainer_rndpoSmoke,
    nnUNetTrainerContinuedSFT,
    nnUNetTrainerDPO,
    nnUNetTrainerPseudoLabel,
    nnUNetTrainerRNDPO,
)

__all__ = [
    "nnUNetTrainer_cpuBase",
    "nnUNetTrainer_rndpoSmoke",
    "nnUNetTrainerContinuedSFT",
    "nnUNetTrainerDPO",
    "nnUNetTrainerPseudoLabel",
    "nnUNetTrainerRNDPO",
]


def __getattr__(name: str):
    from nnunetv2_rndpo.variants import variant_trainer

    return variant_trainer(name)
