"""The configuration dataclass: defaults, the JSON override file and every validation message."""

import json

import pytest

from nnunetv2_rndpo.config import CONFIG_ENV_VAR, DEFAULT_BETA, RNDPOConfig, load_config
from nnunetv2_rndpo.mining import MiningParams

REQUIRED_KEYS = (
    "num_epochs num_iterations_per_epoch learning_rate beta loss_type normalization min_region_voxels "
    "label_smoothing sft_weight num_proposals proposal_sources proposal_models judge judge_scores judge_sigma "
    "judge_size_bias learned_judge mining mining_tau mining_min_margin mining_min_region mining_max_region "
    "mining_max_pairs_per_case pairs_file "
    "base_checkpoint unlabeled_dir eval_every seed"
).split()


def test_required_keys_exist_with_help():
    help_text = RNDPOConfig.field_help()
    for key in REQUIRED_KEYS:
        assert help_text[key], key


def test_defaults_are_valid_and_beta_follows_normalization():
    config = RNDPOConfig()
    assert config.normalization == "region" and config.effective_beta == DEFAULT_BETA["region"]
    assert RNDPOConfig(normalization="none").effective_beta == DEFAULT_BETA["none"]
    assert RNDPOConfig(beta=0.3).effective_beta == 0.3


def write(tmp_path, content):
    path = tmp_path / "rndpo.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return {CONFIG_ENV_VAR: str(path)}


def test_file_overrides_preset_which_overrides_defaults(tmp_path):
    environ = write(tmp_path, {"beta": 0.5, "judge": "oracle"})
    config = load_config({"normalization": "none", "beta": 0.01}, environ)
    assert (config.normalization, config.beta, config.judge) == ("none", 0.5, "oracle")
    assert load_config({"num_epochs": 3}, {}).num_epochs == 3


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"\\${CONFIG_ENV_VAR} points at .*missing.json, which does not exist"):
        load_config(None, {CONFIG_ENV_VAR: str(tmp_path / "missing.json")})


def test_invalid_json(tmp_path):
    with pytest.raises(ValueError, match="is not valid JSON: Expecting"):
        load_config(None, write(tmp_path, '{"beta": 0.1,'))


def test_not_an_object(tmp_path):
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        load_config(None, write(tmp_path, "[1, 2]"))


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ValueError, match="unknown config key\\(s\\) 'betta' \\(did you mean 'beta'\\?\\) in .*; "
                                         "valid keys: num_epochs"):
        load_config(None, write(tmp_path, {"betta": 0.1}))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("loss_type", "kto", "config key 'loss_type': 'kto' is not allowed; valid: sigmoid, ipo, hinge, robust"),
        ("normalization", "mean",
         "config key 'normalization': 'mean' is not allowed; valid: none, region, sqrt_region, volume"),
        ("judge", "gpt",
         "config key 'judge': 'gpt' is not allowed; valid: agreement, uncertainty, learned, oracle, external"),
        ("mining", "all", "config key 'mining': 'all' is not allowed; valid: top_bottom, top_random"),
        ("optimizer", "lion", "config key 'optimizer': 'lion' is not allowed; valid: adamw, sgd"),
        ("proposal_sources", ["mirror", "ensemble"], "config key 'proposal_sources': 'ensemble' is not allowed"),
        ("proposal_sources", [], "proposal_sources must name at least one of"),
        ("num_epochs", 0, "config key 'num_epochs': 0 is out of range; must be >= 1"),
        ("num_iterations_per_epoch", -1, "config key 'num_iterations_per_epoch': -1 is out of range; must be >= 1"),
        ("learning_rate", 0, "config key 'learning_rate': 0 is out of range; must be > 0"),
        ("grad_clip", 0.0, "config key 'grad_clip': 0.0 is out of range; must be > 0"),
        ("batch_size", 0, "config key 'batch_size': 0 is out of range; must be >= 1"),
        ("beta", -1.0, "config key 'beta': -1.0 is out of range; must be > 0"),
        ("min_region_voxels", 0, "config key 'min_region_voxels': 0 is out of range; must be >= 1"),
        ("label_smoothing", 0.5, "config key 'label_smoothing': 0.5 is out of range; must be >= 0 and < 0.5"),
        ("sft_weight", -0.1, "config key 'sft_weight': -0.1 is out of range; must be >= 0"),
        ("sft_batch_fraction", 1.0, "config key 'sft_batch_fraction': 1.0 is out of range; must be > 0 and < 1"),
        ("warmup_fraction", -0.01, "config key 'warmup_fraction': -0.01 is out of range; must be >= 0 and < 1"),
        ("consistency_weight", -1.0, "config key 'consistency_weight': -1.0 is out of range; must be >= 0"),
        ("agreement_weight", -1.0, "config key 'agreement_weight': -1.0 is out of range; must be >= 0"),
        ("num_val_iterations_per_epoch", 0,
         "config key 'num_val_iterations_per_epoch': 0 is out of range; must be >= 1"),
        ("guard_num_cases", -1, "config key 'guard_num_cases': -1 is out of range; must be >= 0"),
        ("guard_max_kl", 0.0, "config key 'guard_max_kl': 0.0 is out of range; must be > 0"),
        ("guard_lr_decay", 1.5, "config key 'guard_lr_decay': 1.5 is out of range; must be > 0 and <= 1"),
        ("disagreement_oversample", 1.5,
         "config key 'disagreement_oversample': 1.5 is out of range; must be >= 0 and <= 1"),
        ("num_proposals", 1, "config key 'num_proposals': 1 is out of range; must be >= 2"),
        ("judge_sigma", -0.1, "config key 'judge_sigma': -0.1 is out of range; must be >= 0"),
        ("eval_every", -1, "config key 'eval_every': -1 is out of range; must be >= 0"),
        ("num_epochs", 2.5, "config key 'num_epochs': 2.5 has the wrong type; expected int"),
        ("num_epochs", True, "config key 'num_epochs': True has the wrong type; expected int"),
        ("beta", "high", "config key 'beta': 'high' has the wrong type; expected float \\| None"),
        ("judge", None, "config key 'judge': None has the wrong type; expected str"),
        ("final_validation", "no", "config key 'final_validation': 'no' has the wrong type; expected bool"),
        ("proposal_sources", "mirror",
         "config key 'proposal_sources': 'mirror' has the wrong type; expected list\\[str\\]"),
        ("judge", "external", "judge='external' needs judge_scores"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(tmp_path, key, value, message):
    with pytest.raises(ValueError, match=message):
        RNDPOConfig(**{key: value})
    with pytest.raises(ValueError, match=f"{message}.*named by \\${CONFIG_ENV_VAR}"):
        load_config(None, write(tmp_path, {key: value}))


def test_to_dict_round_trips(tmp_path):
    config = RNDPOConfig(beta=0.2, proposal_sources=["mirror", "temperature"])
    assert load_config(None, write(tmp_path, config.to_dict())) == config


def test_model_source_and_mining_keys_are_validated():
    from nnunetv2_rndpo.config import RNDPOConfig

    with pytest.raises(ValueError, match="proposal_sources has 'model' but proposal_models is empty"):
        RNDPOConfig(proposal_sources=["model"])
    with pytest.raises(ValueError, match="config key 'mining_max_region': 2 is out of range; must be >= 5"):
        RNDPOConfig(mining_min_region=5, mining_max_region=2)
    config = RNDPOConfig(mining="quantile", mining_max_pairs_per_case=3, judge="uncertainty")
    assert MiningParams.from_config(config) == MiningParams("quantile", max_pairs_per_case=3)


def test_label_smoothing_auto_is_validated():
    from nnunetv2_rndpo.config import RNDPOConfig

    assert RNDPOConfig(label_smoothing="auto", loss_type="robust").label_smoothing == "auto"
    with pytest.raises(ValueError, match=r"config key 'label_smoothing': 'half' is not allowed; valid: a number in "
                                         r"\[0, 0.5\) or 'auto'"):
        RNDPOConfig(label_smoothing="half")
    with pytest.raises(ValueError, match="label_smoothing='auto' measures the judge on the labeled validation cases"):
        RNDPOConfig(label_smoothing="auto", judge="external", judge_scores="s.csv")
