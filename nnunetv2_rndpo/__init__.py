"""nnunetv2-rndpo: Region-Normalized DPO fine-tuning for nnU-Net v2.

Import-light on purpose: nnU-Net imports every module of the ``nnUNet_extTrainer`` folder while it
looks up a trainer, so nothing heavy happens here.

Code map (docs/explanation.md, "Code map")::

    raw pool    datasets, synthetic          nnU-Net raw datasets; imagesUnlabeled/ is the pool
    → pool      pool                         find, check, preprocess the pool; the labeled cases
    → proposals proposals, hybrids, cascade  K masks per case from the base model, local hybrids
    → judges    judges, learned_judge        a score per proposal (judge_training trains the learned one)
    → mining    mining                       (chosen, rejected) pairs; the pairs file
    → sampling  sampling                     patch batches of pairs around the disagreement region D
    → objective objective                    the RN-DPO loss and its anchors, pure functions
    ← trainer/phase  trainer, phase          nnU-Net's trainer hooks; the phase runs the stages above,
                     metrics_log, drift_guard  with its metrics log and drift guard
    evaluation/metrics  evaluation, metrics, reliability   test Dice, curve summaries, judge reliability

Around them: ``pipeline`` (the stages before fine-tuning, shared by the trainer and the commands), the entry
points ``commands``, ``demo``, ``study``, ``report``, and the plumbing ``config``, ``paths``, ``atomic_files``,
``checkpoint``, ``errors``. tests/test_imports.py keeps the import graph free of cycles.
"""

__version__ = "0.1.0"
