"""The pipeline's pairs file and ``label_smoothing: "auto"`` (fast, no training)."""

import math

import numpy as np
import pytest

from nnunetv2_rndpo.mining import Pair


def distinct_masks(k: int, size: int = 8) -> np.ndarray:
    """``k`` masks that all differ: mask j has the first j + 1 voxels of a flat image set."""
    masks = np.zeros((k, size * size), np.uint8)
    for j in range(k):
        masks[j, : j + 1] = 1
    return masks.reshape(k, size, size)


def test_auto_label_smoothing_is_the_mined_pairs_flip_rate():
    from nnunetv2_rndpo.pipeline import MAX_AUTO_LABEL_SMOOTHING, auto_label_smoothing

    assert auto_label_smoothing({"labeled/mined_pair_acc": 0.9}) == pytest.approx(0.1)
    assert auto_label_smoothing({"labeled/mined_pair_acc": 1.0}) == 0.0
    assert auto_label_smoothing({"labeled/mined_pair_acc": 0.2}) == MAX_AUTO_LABEL_SMOOTHING
    assert auto_label_smoothing({"labeled/mined_pair_acc": math.nan, "labeled/pairwise/accuracy": 0.75}) == 0.25
    assert auto_label_smoothing({"labeled/mined_pair_acc": math.nan, "labeled/pairwise/accuracy": math.nan}) == 0.0


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
