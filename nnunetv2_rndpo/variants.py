"""Named variants: several RN-DPO configurations on one dataset, each with its own trainer and results folder.

nnU-Net names a results folder after the trainer class, so two configurations of ``nnUNetTrainerRNDPO``
would share one folder. A variant is a trainer class made from a named config file::

    export nnUNet_rndpo_variants=/path/to/variants    # holds beta1.json, oracle_noisy.json, ...
    nnUNetv2_train 4 3d_fullres 0 -tr nnUNetTrainerRNDPO_beta1
    nnUNetv2_predict -i IN -o OUT -d 4 -c 3d_fullres -f 0 -tr nnUNetTrainerRNDPO_beta1

``<Preset>_<name>`` is the preset trainer ``<Preset>`` (one of :data:`PRESETS`) with the keys of
``$nnUNet_rndpo_variants/<name>.json`` on top of its preset; ``$nnUNet_rndpo_config``, if set, still applies
on top of both, as for every trainer. nnU-Net finds the class through ``nnUNet_extTrainer`` like the presets:
the module ``trainers/rndpo_trainers.py`` answers unknown names through :func:`variant_trainer`. Classes
are made once per process and live in this module (``__getattr__``), so they pickle to spawn workers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

VARIANTS_ENV_VAR = "nnUNet_rndpo_variants"
PRESETS = ("nnUNetTrainerRNDPO", "nnUNetTrainerDPO", "nnUNetTrainerPseudoLabel", "nnUNetTrainerContinuedSFT")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")

_classes: dict[str, type] = {}


def variant_file(class_name: str, environ=None) -> tuple[str, Path] | None:
    """``(preset, $nnUNet_rndpo_variants/<name>.json)`` if ``class_name`` is ``<preset>_<name>`` and the file
    exists, else None."""
    environ = os.environ if environ is None else environ
    preset, _, name = class_name.partition("_")
    folder = environ.get(VARIANTS_ENV_VAR)
    if preset not in PRESETS or not VARIANT_NAME.match(name) or not folder:
        return None
    path = Path(folder) / f"{name}.json"
    return (preset, path) if path.is_file() else None


def variant_trainer(class_name: str) -> type:
    """The trainer class ``<preset>_<name>``, made from ``$nnUNet_rndpo_variants/<name>.json`` on first use.

    Raises:
        AttributeError: not a variant name, or no such file (so ``hasattr`` is False and nnU-Net goes on
            searching, then reports the trainer as not found).
        ValueError: the file has unknown keys or bad values (named with the file).
    """
    if class_name in _classes:
        return _classes[class_name]
    found = variant_file(class_name)
    if found is None:
        raise AttributeError(class_name)
    preset_name, path = found
    from nnunetv2_rndpo import trainer as trainers
    from nnunetv2_rndpo.config import load_config, read_config_file

    preset = getattr(trainers, preset_name)
    values = {**preset.preset, **read_config_file(path)}
    try:
        load_config(values, environ={})  # a bad file is an error at lookup, naming the file
    except ValueError as error:
        raise ValueError(f"variant {class_name} ({path}, in ${VARIANTS_ENV_VAR}): {error}") from None
    variant = type(class_name, (preset,), {
        "preset": values, "variant_file": str(path), "__module__": __name__, "__qualname__": class_name,
        "__doc__": f"{preset_name} with the settings of {path} (a named variant, docs/howto.md)."})
    _classes[class_name] = variant
    return variant


def __getattr__(name: str) -> type:
    if name.startswith("__"):
        raise AttributeError(name)
    return variant_trainer(name)
