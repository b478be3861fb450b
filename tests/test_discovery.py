"""nnU-Net finds the trainers through nnUNet_extTrainer, and they keep nnUNetTrainer's exact signature."""

import inspect
import pickle
from pathlib import Path

import pytest

TRAINERS = ["nnUNetTrainerRNDPO", "nnUNetTrainerDPO", "nnUNetTrainerPseudoLabel", "nnUNetTrainerContinuedSFT",
            "nnUNetTrainer_rndpoSmoke", "nnUNetTrainer_cpuBase"]
TRAINERS_FOLDER = Path(__file__).resolve().parents[1] / "trainers"


@pytest.mark.parametrize("name", TRAINERS)
def test_found_through_ext_trainer_and_picklable(monkeypatch, name):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunetv2_rndpo.trainer as package_module

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_FOLDER))
    found = recursive_find_trainer_class_by_name(name)
    assert found is getattr(package_module, name)  # the re-export, not a copy purged from sys.modules
    assert pickle.loads(pickle.dumps(found)) is found


def test_not_found_without_the_variable(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerRNDPO"):
        recursive_find_trainer_class_by_name("nnUNetTrainerRNDPO")


@pytest.mark.parametrize("name", TRAINERS)
def test_init_signature_is_nnunet_trainers(name):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunetv2_rndpo.trainer as package_module

    ours = inspect.signature(getattr(package_module, name).__init__)
    assert list(ours.parameters) == list(inspect.signature(nnUNetTrainer.__init__).parameters)
