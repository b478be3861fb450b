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


# ---------------------------------------------------------------- named variants ($nnUNet_rndpo_variants)


@pytest.fixture
def variants(monkeypatch, tmp_path):
    (tmp_path / "beta1.json").write_text('{"beta": 1.0, "judge": "uncertainty"}')
    (tmp_path / "bad_key.json").write_text('{"betta": 1.0}')
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_FOLDER))
    monkeypatch.setenv("nnUNet_rndpo_variants", str(tmp_path))
    monkeypatch.delenv("nnUNet_rndpo_config", raising=False)
    return tmp_path


@pytest.mark.parametrize(("preset", "normalization"), [("nnUNetTrainerRNDPO", "region"), ("nnUNetTrainerDPO", "none")])
def test_a_variant_is_found_through_ext_trainer_with_its_files_settings(variants, preset, normalization):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunetv2_rndpo.trainer as package_module
    from nnunetv2_rndpo.config import load_config

    found = recursive_find_trainer_class_by_name(f"{preset}_beta1")
    assert found.__name__ == f"{preset}_beta1" and issubclass(found, getattr(package_module, preset))
    assert pickle.loads(pickle.dumps(found)) is found  # spawn workers get the same class
    assert recursive_find_trainer_class_by_name(f"{preset}_beta1") is found
    config = load_config(found.preset, environ={})
    assert (config.beta, config.judge, config.normalization) == (1.0, "uncertainty", normalization)
    assert list(inspect.signature(found.__init__).parameters) == list(
        inspect.signature(package_module.nnUNetTrainerRNDPO.__init__).parameters)


def test_a_variant_without_its_file_is_not_found(variants, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerRNDPO_beta2"):
        recursive_find_trainer_class_by_name("nnUNetTrainerRNDPO_beta2")
    monkeypatch.delenv("nnUNet_rndpo_variants")
    with pytest.raises(RuntimeError, match="Could not find requested nnunet trainer nnUNetTrainerRNDPO_unset"):
        recursive_find_trainer_class_by_name("nnUNetTrainerRNDPO_unset")


def test_a_variant_file_with_a_bad_key_is_an_error_naming_the_file(variants):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    with pytest.raises(ValueError, match=r"variant nnUNetTrainerRNDPO_bad_key \(.*bad_key.json.*unknown config key"
                                         r"\(s\) 'betta' \(did you mean 'beta'\?\)"):
        recursive_find_trainer_class_by_name("nnUNetTrainerRNDPO_bad_key")
