"""The docs name only commands, trainers and config keys that exist, and the generated reference is current."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from nnunetv2_rndpo import reference
from nnunetv2_rndpo.config import RNDPOConfig
from nnunetv2_rndpo.drift_guard import GUARD_KEYS
from nnunetv2_rndpo.metrics_log import LOSS_TERMS, METRIC_KEYS
from nnunetv2_rndpo.variants import PRESETS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CODE_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)
NNUNET_COMMANDS = {"nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict", "nnUNetv2_evaluate_folder",
                   "nnUNetv2_find_best_configuration", "nnUNetv2_extract_fingerprint", "nnUNetv2_plan_experiment",
                   "nnUNetv2_preprocess", "nnUNetv2_ensemble", "nnUNetv2_apply_postprocessing",
                   "nnUNetv2_convert_MSD_dataset", "nnUNetv2_evaluate_simple", "nnUNetv2_export_model_to_zip",
                   "nnUNetv2_install_pretrained_model_from_zip"}


@functools.cache
def nnunet_has_trainer(name: str) -> bool:
    """Whether nnU-Net itself ships a trainer class of this name (e.g. nnUNetTrainer_250epochs)."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"
    return recursive_find_python_class(str(folder), name, "nnunetv2.training.nnUNetTrainer") is not None


def code_blocks(path: Path) -> list[str]:
    return CODE_BLOCK.findall(path.read_text())


def test_reference_is_generated_from_the_code():
    committed = (REPO / "docs" / "reference.md").read_text()
    assert committed == reference.build() + "\n", (
        "docs/reference.md is stale: run  python -m nnunetv2_rndpo.reference > docs/reference.md")


def test_every_assumption_in_the_code_is_in_the_generated_reference():
    """Every ``Assumption:`` of a ``.py`` file anywhere under nnunetv2_rndpo/ or trainers/ has its row."""
    table = reference.build().split("## Assumptions", 1)[1]
    files = [p for folder in ("nnunetv2_rndpo", "trainers") for p in sorted((REPO / folder).rglob("*.py"))
             if p != REPO / "nnunetv2_rndpo" / "reference.py"]  # it names the marker without making one
    written = [(p.relative_to(REPO), line.split("Assumption:", 1)[1].strip().rstrip('"').strip())
               for p in files for line in p.read_text().splitlines() if "Assumption:" in line]
    assert written
    missing = [(str(path), text) for path, text in written if text.replace("|", "\\|") not in table]
    assert not missing, f"assumptions missing from the generated reference: {missing}"
    assert sum(line.startswith("| `") for line in table.splitlines()) == len(written)


def test_assumptions_are_found_in_subfolders_and_trainers(tmp_path):
    package, trainers = tmp_path / "package", tmp_path / "trainers"
    (package / "sub").mkdir(parents=True)
    trainers.mkdir()
    (package / "top.py").write_text('def f():\n    """Does f.\n\n    Assumption: top level.\n    """\n')
    (package / "sub" / "deep.py").write_text("class C:\n    # Assumption: in a subfolder,\n    # on two lines.\n")
    (package / "reference.py").write_text('"""Lists every ``Assumption:`` paragraph."""\n')
    (trainers / "mine.py").write_text("# Assumption: in trainers.\n")
    found = reference.assumptions(reference.source_files(package, trainers))
    assert sorted(found) == [("sub.deep.C", "in a subfolder, on two lines."), ("top.f", "top level."),
                             ("trainers.mine", "in trainers.")]
    assert reference.source_files(package, tmp_path / "absent") == [("sub.deep", package / "sub" / "deep.py"),
                                                                   ("top", package / "top.py")]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_name_existing_commands_trainers_and_keys(path):
    ours = {name for name, _ in reference.console_scripts()}
    import trainers.rndpo_trainers as exported  # the classes nnU-Net finds through nnUNet_extTrainer

    trainers = {n for n in dir(exported) if n.startswith("nnUNetTrainer")} | {"nnUNetTrainer"}
    variant = re.compile(rf"^({'|'.join(PRESETS)})_[A-Za-z0-9_]+$")  # named variants (docs/howto.md) exist per file
    keys = {f.name for f in RNDPOConfig.__dataclass_fields__.values()}
    text = path.read_text()
    for command in set(re.findall(r"\bnnUNetv2_\w+", text)):
        assert command in ours or command in NNUNET_COMMANDS, \
            f"{path.name} names a command that does not exist: {command}"
    for trainer in set(re.findall(r"\bnnUNetTrainer(?:_?[A-Za-z0-9])*", text)):
        assert trainer in trainers or variant.match(trainer) or nnunet_has_trainer(trainer), (
            f"{path.name} names a trainer that does not exist: {trainer}")
    for block in code_blocks(path):
        for candidate in re.findall(r"\{[^{}]*\}", block):  # JSON config snippets inside code blocks
            try:
                values = json.loads(candidate)
            except json.JSONDecodeError:
                continue
            if isinstance(values, dict) and values and not set(values) <= {"0", "1", "background"}:
                unknown = set(values) - keys
                assert not unknown or len(unknown) == len(values), f"{path.name}: unknown config keys {unknown}"


def test_every_logged_metric_is_documented():
    documented = (REPO / "docs" / "trainer.md").read_text()
    missing = [k for k in (*METRIC_KEYS, *LOSS_TERMS, *GUARD_KEYS, "pairs/skipped", "eval/dice") if k not in documented]
    assert not missing, f"docs/trainer.md does not explain {missing}"
