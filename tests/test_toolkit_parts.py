"""Mining strategies and filters, judges, score normalisation, reliability metrics and the commands' argument
checks (fast, no nnU-Net training; the learned judge's parts are in test_learned_judge.py)."""

import math

import numpy as np
import pytest
import torch

from nnunetv2_rndpo.judges import normalize_scores, oracle_scores, true_dice, uncertainty_scores
from nnunetv2_rndpo.metrics import rank, spearman
from nnunetv2_rndpo.mining import MININGS, MiningParams, Pair, candidate_pairs, mine_pairs, pair_statistics
from nnunetv2_rndpo.pipeline import split_cases
from nnunetv2_rndpo.reliability import judge_reliability, pairwise_accuracy

# ---------------------------------------------------------------- mining


def distinct_masks(k: int, size: int = 8) -> np.ndarray:
    """``k`` masks that all differ: mask j has the first j + 1 voxels of a flat image set."""
    masks = np.zeros((k, size * size), np.uint8)
    for j in range(k):
        masks[j, : j + 1] = 1
    return masks.reshape(k, size, size)


SCORES = np.array([0.2, 0.9, 0.1, 0.5, 0.45])


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("top_bottom", [(1, 2)]),
        ("adjacent", [(1, 3), (3, 4), (4, 0), (0, 2)]),
        # gaps 0.8, 0.7, 0.45, 0.4, 0.4 (tie: lower indices first), ...; 0.5 − 0.45 < tau in floating point
        ("margin", [(1, 2), (1, 0), (1, 4), (1, 3), (3, 2), (4, 2), (3, 0), (4, 0), (0, 2)]),
        # mean − 2σ = 0.43 − 2·0.2795 < 0.1: the lowest score is nearest
        ("quantile", [(1, 2)]),
    ],
)
def test_candidate_pairs(strategy, expected):
    assert candidate_pairs(SCORES, strategy, np.random.default_rng(0), tau=0.05) == expected


def test_quantile_picks_near_mean_minus_two_sigma_not_the_outlier():
    scores = np.array([0.9, 0.85, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.7, -5.0])
    target = scores.mean() - 2 * scores.std()
    chosen, rejected = candidate_pairs(scores, "quantile", np.random.default_rng(0))[0]
    assert chosen == 0 and rejected == int(np.argmin(np.abs(scores[1:] - target))) + 1


def test_top_random_is_seeded_and_never_pairs_the_best_with_itself():
    draws = [candidate_pairs(SCORES, "top_random", np.random.default_rng(s))[0] for s in range(30)]
    assert all(c == 1 and r != 1 for c, r in draws) and len({r for _, r in draws}) == 4
    assert draws == [candidate_pairs(SCORES, "top_random", np.random.default_rng(s))[0] for s in range(30)]


@pytest.mark.parametrize("strategy", [m for m in MININGS if m != "local"])  # local: tests/test_hybrids.py
def test_every_strategy_mines_ordered_pairs_with_both_scores(strategy):
    masks, dice = distinct_masks(5), np.array([0.3, 0.8, 0.1, 0.6, 0.5])
    params = MiningParams(strategy, tau=0.0, max_pairs_per_case=10)
    pairs = mine_pairs("c", masks, SCORES, params, np.random.default_rng(0), dice)
    assert pairs and all(p.chosen_score >= p.rejected_score for p in pairs)
    assert all(p.chosen_dice == dice[p.chosen] and p.region_size > 0 for p in pairs)


def test_filters_margin_region_and_cap():
    masks = distinct_masks(5)  # |D| between masks i and j = |i − j|
    rng = np.random.default_rng(0)
    margin = mine_pairs("c", masks, SCORES, MiningParams("margin", tau=0.0, max_pairs_per_case=20), rng)
    assert len(margin) == 10
    assert all(p.chosen_score - p.rejected_score >= 0.3 for p in
               mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, 0.3, max_pairs_per_case=20), rng))
    assert all(2 <= p.region_size <= 3 for p in
               mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, min_region=2, max_region=3,
                                                             max_pairs_per_case=20), rng))
    capped = mine_pairs("c", masks, SCORES, MiningParams("margin", 0.0, max_pairs_per_case=2), rng)
    assert [(p.chosen, p.rejected) for p in capped] == [(1, 2), (1, 0)]  # largest gaps first


def test_mining_params_errors():
    with pytest.raises(ValueError, match="unknown mining 'best'; valid: top_bottom"):
        MiningParams("best")
    with pytest.raises(ValueError, match="max_pairs_per_case must be >= 1"):
        MiningParams(max_pairs_per_case=0)
    with pytest.raises(ValueError, match="max_region 1 is below min_region 5"):
        MiningParams(min_region=5, max_region=1)


def test_pair_statistics():
    pairs = [Pair("a", 0, 1, 0.9, 0.1, 10, 0.8, 0.2), Pair("b", 0, 1, 0.5, 0.4, 30, 0.1, 0.3)]
    stats = pair_statistics(pairs, 3)
    assert stats["pairs/count"] == 2 and stats["pairs/pool_cases"] == 3
    assert stats["judge/margin_mean"] == pytest.approx(0.45) and stats["region/size_p50"] == 20
    assert stats["pairs/oracle_acc"] == 0.5
    # split at the median |D| (20): the small-|D| pair is right, the large-|D| one wrong
    assert stats["pairs/oracle_acc_small_region"] == 1.0 and stats["pairs/oracle_acc_large_region"] == 0.0
    assert "pairs/oracle_acc" not in pair_statistics([Pair("a", 0, 1, 0.9, 0.1, 10)], 1)


# ---------------------------------------------------------------- judges


def ranked_case(rng: np.random.Generator, k: int = 6, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A label square and ``k`` proposals: the square eroded or dilated by different amounts."""
    label = np.zeros((size, size), np.uint8)
    label[4:12, 4:12] = 1
    masks = np.zeros((k, size, size), np.uint8)
    for j, grow in enumerate(rng.permutation(np.arange(-3, k - 3))):
        masks[j, 4 - grow: 12 + grow, 4 - grow: 12 + grow] = 1
    return masks, label


def test_oracle_sigma_zero_ranks_exactly_and_large_sigma_is_a_coin():
    rng = np.random.default_rng(0)
    cases = [ranked_case(rng) for _ in range(300)]
    dice = {str(i): true_dice(m, lab, [1]) for i, (m, lab) in enumerate(cases)}
    exact = {str(i): oracle_scores(m, lab, [1], 0.0, rng)[0] for i, (m, lab) in enumerate(cases)}
    report = judge_reliability(exact, dice)
    assert report["pairwise/accuracy"] == 1.0 and report["top1/regret"] == 0.0
    assert report["spearman/per_case"] == pytest.approx(1.0) and report["spearman/pooled"] == pytest.approx(1.0)
    noisy = {str(i): oracle_scores(m, lab, [1], 100.0, rng)[0] for i, (m, lab) in enumerate(cases)}
    assert abs(judge_reliability(noisy, dice)["pairwise/accuracy"] - 0.5) < 0.05


def test_oracle_size_bias_prefers_larger_masks():
    masks, label = ranked_case(np.random.default_rng(1))
    sizes = masks.reshape(len(masks), -1).sum(1)
    scores, dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), size_bias=10.0)
    assert int(np.argmax(scores)) == int(np.argmax(sizes)) != int(np.argmax(dice))
    scores, _ = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), size_bias=-10.0)
    assert int(np.argmax(scores)) == int(np.argmin(sizes))


def test_uncertainty_is_soft_dice_to_the_mean_probability():
    probabilities = np.zeros((2, 4, 4), np.float32)
    probabilities[1, :2] = 1.0  # the model is sure about the top half
    probabilities[0] = 1 - probabilities[1]
    top, all_, none = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    top[:2] = 1
    scores = uncertainty_scores(np.stack([top, all_, none]), probabilities, [1])
    assert scores.tolist() == pytest.approx([1.0, 2 * 8 / (16 + 8), 0.0])
    empty = uncertainty_scores(np.stack([none]), np.stack([np.ones((4, 4)), np.zeros((4, 4))]), [1])
    assert empty.tolist() == [1.0]  # nothing predicted where nothing is probable


def test_normalize_scores_keeps_order():
    scores = {"a": np.array([1.0, 3.0, 2.0]), "b": np.array([5.0, 5.0])}
    minmax = normalize_scores(scores, "case_minmax")
    assert minmax["a"].tolist() == [0.0, 1.0, 0.5] and minmax["b"].tolist() == [0.5, 0.5]
    assert normalize_scores(scores, "case_rank")["a"].tolist() == [0.0, 1.0, 0.5]
    assert normalize_scores(scores, "none")["a"] is scores["a"]
    with pytest.raises(ValueError, match="unknown score normalisation 'z'; valid: none, case_minmax, case_rank"):
        normalize_scores(scores, "z")


# ---------------------------------------------------------------- reliability


def test_rank_spearman_and_pairwise_accuracy_by_hand():
    assert rank(np.array([3.0, 1.0, 3.0])).tolist() == [1.5, 0.0, 1.5]
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    # pairs (0,1) right, (0,2) tie in score → 0.5, (1,2) wrong; Dice ties are not counted
    assert pairwise_accuracy(np.array([0.5, 0.1, 0.5]), np.array([0.9, 0.3, 0.2])) == (1.5, 3)
    assert pairwise_accuracy(np.array([0.1, 0.2]), np.array([0.5, 0.5])) == (0.0, 0)


def test_top1_regret():
    report = judge_reliability({"a": np.array([0.1, 0.9]), "b": np.array([0.9, 0.1])},
                               {"a": np.array([0.8, 0.6]), "b": np.array([0.7, 0.5])})
    assert report["top1/regret"] == pytest.approx(0.1) and report["pairwise/accuracy"] == 0.5
    with pytest.raises(ValueError, match="no true Dice for cases \\['b'\\]"):
        judge_reliability({"a": np.array([0.1, 0.9]), "b": np.array([0.9, 0.1])}, {"a": np.array([0.8, 0.6])})


# ---------------------------------------------------------------- commands


def test_split_cases_is_nnunet_predicts_split():
    cases = [f"c{i}" for i in range(5)]
    assert split_cases(cases, 2, 0) == ["c0", "c2", "c4"] and split_cases(cases, 2, 1) == ["c1", "c3"]
    with pytest.raises(ValueError, match="-part_id must be in 0 ... 1 \\(-num_parts 2\\), got 2"):
        split_cases(cases, 2, 2)
    with pytest.raises(ValueError, match="-num_parts must be >= 1"):
        split_cases(cases, 0, 0)


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("main_proposals", ["-d", "1", "-c", "2d", "-num_parts", "2", "-part_id", "3"], "-part_id must be in 0 ... 1"),
        ("main_proposals", ["-d", "1", "-c", "2d", "-n", "1"], "-n must be >= 2"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "external"], "--judge external needs --scores FILE"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--judge-sigma", "-1"],
         "--judge-sigma must be >= 0"),
        ("main_train_judge", ["-d", "1", "-c", "2d", "--epochs", "0"], "--epochs must be >= 1"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--max-pairs-per-case", "0"],
         "max_pairs_per_case must be >= 1"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--mining", "local"], "needs --hybrids N"),
        ("main_mine", ["-d", "1", "-c", "2d", "--scores", "s.csv", "--hybrids", "4"], "drop --hybrids"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--hybrids", "-1"], "--hybrids must be >= 0"),
        ("main_judge", ["-d", "1", "-c", "2d", "--judge", "oracle", "--hybrids", "4", "--local-part-voxels", "5"],
         "local_min_part_voxels <= local_part_voxels"),
    ],
)
def test_commands_reject_bad_flags_before_any_work(command, argv, message, capsys):
    from nnunetv2_rndpo import commands

    with pytest.raises(SystemExit) as exit_info:
        getattr(commands, command)(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--judge", "gpt"], ["--judge", "oracle", "--sources", "dreams"]])
def test_commands_reject_unknown_choices(argv, capsys):
    from nnunetv2_rndpo import commands

    with pytest.raises(SystemExit):
        commands.main_judge(["-d", "1", "-c", "2d", *argv])
    assert "invalid choice" in capsys.readouterr().err


# ---------------------------------------------------------------- proposal sources


class FakePredictor:
    """The part of ``nnUNetPredictor`` that :func:`propose_case` uses, over a 2D network."""

    def __init__(self, network: torch.nn.Module):
        from types import SimpleNamespace

        self.network, self.use_mirroring = network, False
        self.configuration_manager = SimpleNamespace(patch_size=(8, 8))

    def predict_sliding_window_return_logits(self, image: torch.Tensor) -> torch.Tensor:
        self.network.eval()  # as nnU-Net's predictor does before every prediction
        return self.network(image[None])[0].half()


def tiny_network(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(1, 2, 3, padding=1)] + ([torch.nn.Dropout2d(dropout)] if dropout else [])
    return torch.nn.Sequential(*layers)


def label_manager():
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    return LabelManager({"background": 0, "target": 1}, regions_class_order=None)


def test_plan_proposals_new_sources():
    from nnunetv2_rndpo.proposals import plan_proposals

    specs = plan_proposals(6, ["intensity", "dropout", "model"], (0, 1), 0, models=["1/checkpoint_final.pth"])
    assert [s.source for s in specs] == ["intensity", "intensity", "intensity", "dropout", "dropout", "model"]
    with pytest.raises(ValueError, match="unknown proposal source\\(s\\) \\['ensemble'\\]"):
        plan_proposals(2, ["ensemble"], (0, 1), 0)


def test_intensity_dropout_and_model_sources():
    from nnunetv2_rndpo.proposals import ProposalSpec, propose_case

    image = torch.randn(1, 12, 12, generator=torch.Generator().manual_seed(0))
    lm = label_manager()
    network = tiny_network(dropout=0.5)
    base = {k: v.clone() for k, v in network.state_dict().items()}
    other = {k: -v for k, v in base.items()}
    specs = [ProposalSpec("intensity", (1.0, 2.0)), ProposalSpec("dropout", 0), ProposalSpec("dropout", 1),
             ProposalSpec("model", "1/x.pth"), ProposalSpec("mirror", ())]
    masks, probabilities = propose_case(FakePredictor(network), image, specs, lm, (0, 1), seed=3,
                                        extra_weights={"1/x.pth": other})
    assert masks.shape == (5, 12, 12) and probabilities.shape == (2, 12, 12)
    again, _ = propose_case(FakePredictor(network), image, specs, lm, (0, 1), seed=3, extra_weights={"1/x.pth": other})
    assert np.array_equal(masks, again)  # dropout samples are seeded
    assert not np.array_equal(masks[1], masks[2])  # two different dropout samples
    assert all(torch.equal(v, base[k]) for k, v in network.state_dict().items())  # base weights restored
    assert not network.training


def test_dropout_source_needs_a_dropout_network():
    from nnunetv2_rndpo.proposals import ProposalSpec, propose_case

    with pytest.raises(ValueError, match="no dropout layers \\(nnU-Net's default plans set dropout_op to None\\)"):
        propose_case(FakePredictor(tiny_network()), torch.randn(1, 8, 8), [ProposalSpec("dropout", 0)],
                     label_manager(), (0, 1))


def test_new_config_keys_are_validated():
    from nnunetv2_rndpo.config import RNDPOConfig

    with pytest.raises(ValueError, match="proposal_sources has 'model' but proposal_models is empty"):
        RNDPOConfig(proposal_sources=["model"])
    with pytest.raises(ValueError, match="config key 'mining_max_region': 2 is out of range; must be >= 5"):
        RNDPOConfig(mining_min_region=5, mining_max_region=2)
    config = RNDPOConfig(mining="quantile", mining_max_pairs_per_case=3, judge="uncertainty")
    assert MiningParams.from_config(config) == MiningParams("quantile", max_pairs_per_case=3)


# ---------------------------------------------------------------- label_smoothing "auto"


def test_auto_label_smoothing_is_the_mined_pairs_flip_rate():
    from nnunetv2_rndpo.pipeline import MAX_AUTO_LABEL_SMOOTHING, auto_label_smoothing

    assert auto_label_smoothing({"labeled/mined_pair_acc": 0.9}) == pytest.approx(0.1)
    assert auto_label_smoothing({"labeled/mined_pair_acc": 1.0}) == 0.0
    assert auto_label_smoothing({"labeled/mined_pair_acc": 0.2}) == MAX_AUTO_LABEL_SMOOTHING
    assert auto_label_smoothing({"labeled/mined_pair_acc": math.nan, "labeled/pairwise/accuracy": 0.75}) == 0.25
    assert auto_label_smoothing({"labeled/mined_pair_acc": math.nan, "labeled/pairwise/accuracy": math.nan}) == 0.0


def test_label_smoothing_auto_is_validated():
    from nnunetv2_rndpo.config import RNDPOConfig

    assert RNDPOConfig(label_smoothing="auto", loss_type="robust").label_smoothing == "auto"
    with pytest.raises(ValueError, match=r"config key 'label_smoothing': 'half' is not allowed; valid: a number in "
                                         r"\[0, 0.5\) or 'auto'"):
        RNDPOConfig(label_smoothing="half")
    with pytest.raises(ValueError, match="label_smoothing='auto' measures the judge on the labeled validation cases"):
        RNDPOConfig(label_smoothing="auto", judge="external", judge_scores="s.csv")


# ---------------------------------------------------------------- pairs file


def test_pairs_file_round_trip_and_errors(tmp_path):
    import json
    from types import SimpleNamespace

    from nnunetv2_rndpo.mining import pairs_document, read_pairs_file
    from nnunetv2_rndpo.proposals import ProposalCache

    cache = ProposalCache(tmp_path / "proposals", {"seed": 1})
    cache.save_case("a", distinct_masks(3), np.zeros((2, 8, 8), np.float16))
    pool = SimpleNamespace(case_ids=["a"])
    pairs = [Pair("a", 2, 0, 0.9, 0.1, 3)]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs_document(pairs, {"judge/margin_mean": 0.8}, cache)))
    assert read_pairs_file(path, pool, cache) == (pairs, {"judge/margin_mean": 0.8})
    with pytest.raises(FileNotFoundError, match="write it with nnUNetv2_rndpo_mine"):
        read_pairs_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    for document, message in [
        ({"pairs": [{"case": "a"}]}, "is not a pairs file written by nnUNetv2_rndpo_mine"),
        (pairs_document([Pair("zz", 1, 0, 0.9, 0.1, 3)], {}), "names cases not in the unlabeled pool: \\['zz'\\]"),
        (pairs_document([Pair("a", 5, 0, 0.9, 0.1, 3)], {}), "case 'a' has proposals 0 ... 2, but a pair uses 5 and 0"),
        (pairs_document(pairs, {}, ProposalCache(tmp_path / "proposals", {"seed": 2})), "was mined from proposals"),
    ]:
        bad.write_text(json.dumps(document))
        with pytest.raises(ValueError, match=message):
            read_pairs_file(bad, pool, cache)


def test_region_label_accuracy_is_the_share_of_the_push_that_is_right():
    from types import SimpleNamespace

    from nnunetv2_rndpo.reliability import region_label_accuracy

    label = np.array([1, 1, 0, 0])
    masks = np.array([[1, 0, 1, 0],    # against the truth (mask 1) it differs at voxels 1 and 2, wrong at both
                      [1, 1, 0, 0],    # the truth
                      [0, 0, 0, 0]])   # against mask 0 it differs at voxels 0 and 2: mask 0 right at 0, wrong at 2
    cache = SimpleNamespace(masks=lambda case: masks)
    pool = SimpleNamespace(label=lambda case: label)
    wrong = Pair("a", 0, 1, 0.9, 0.1, 2)
    half = Pair("a", 0, 2, 0.9, 0.1, 2)
    assert region_label_accuracy([wrong], cache, pool) == {"pairs/chosen_right_in_region": 0.0,
                                                           "pairs/chosen_right_where_decidable": 0.0}
    assert region_label_accuracy([half], cache, pool) == {"pairs/chosen_right_in_region": 0.5,
                                                          "pairs/chosen_right_where_decidable": 0.5}
    assert region_label_accuracy([wrong, half], cache, pool)["pairs/chosen_right_in_region"] == 0.25
    # three classes: at voxel 1 the truth is 2 and the masks say 1 and 0, neither right: not decidable
    three = SimpleNamespace(masks=lambda case: np.array([[1, 1, 0], [1, 0, 1]]))
    truth = SimpleNamespace(label=lambda case: np.array([1, 2, 1]))
    assert region_label_accuracy([Pair("a", 1, 0, 0.9, 0.1, 2)], three, truth) == {
        "pairs/chosen_right_in_region": 0.5, "pairs/chosen_right_where_decidable": 1.0}
    assert region_label_accuracy([wrong], cache, SimpleNamespace(label=lambda case: None)) == {}


def test_ignore_label_voxels_count_neither_in_true_dice_nor_in_the_push():
    from types import SimpleNamespace

    from nnunetv2_rndpo.reliability import region_label_accuracy

    # voxels 2 and 3 carry the ignore label 9: what a proposal says there is neither right nor wrong
    label = np.array([1, 1, 9, 9])
    masks = np.array([[1, 1, 0, 0],    # right on every counted voxel
                      [1, 1, 1, 1]])   # differs from mask 0 only where the label is ignored
    assert true_dice(masks, label, [1]).tolist() == [1.0, 2 / 3]  # without it, voxels 2, 3 are false positives
    assert true_dice(masks, label, [1], ignore_label=9).tolist() == [1.0, 1.0]
    scores, dice = oracle_scores(masks, label, [1], 0.0, np.random.default_rng(0), ignore_label=9)
    assert dice.tolist() == [1.0, 1.0] and scores.tolist() == [1.0, 1.0]
    cache = SimpleNamespace(masks=lambda case: np.array([[1, 0, 0, 0], [1, 1, 1, 1]]))
    pool = SimpleNamespace(label=lambda case: label)
    pair = Pair("a", 1, 0, 0.9, 0.1, 3)  # D = voxels 1, 2, 3; only voxel 1 is counted, where mask 1 is right
    assert region_label_accuracy([pair], cache, pool)["pairs/chosen_right_in_region"] == 1 / 3
    assert region_label_accuracy([pair], cache, pool, ignore_label=9) == {"pairs/chosen_right_in_region": 1.0,
                                                                          "pairs/chosen_right_where_decidable": 1.0}


def test_weights_key_changes_with_any_weight_or_the_test_cases():
    """The key of the cached base test Dice: the same weights on the same cases, and nothing else, reuse it."""
    from nnunetv2_rndpo.phase import weights_key

    weights = {"conv.weight": torch.ones(2, 3), "norm.bias": torch.zeros(2)}
    key = weights_key(weights, ["b", "a"])
    assert key == weights_key({k: v.clone() for k, v in weights.items()}, ["a", "b"])
    changed = {**weights, "norm.bias": torch.tensor([0.0, 1e-6])}
    assert weights_key(changed, ["a", "b"]) != key
    assert weights_key(weights, ["a", "c"]) != key
    assert weights_key({**weights, "norm.bias": weights["norm.bias"].bfloat16()}, ["a", "b"]) != key
