from setuptools import find_packages, setup

setup(
    name="nnunetv2-rndpo",
    version="0.1.0",
    description=(
        "Region-Normalized DPO for nnU-Net v2: fine-tune segmentation networks from noisy "
        "quality-control judges instead of new pixel labels."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunetv2_rndpo", "nnunetv2_rndpo.*"]),
    install_requires=[
        # The nnUNet_extTrainer mechanism and the trainer internals we hook are version-specific.
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.1,<=2.14.1",
        "numpy",
        "scipy",
        "SimpleITK",
        "matplotlib",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "hypothesis", "ruff"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_rndpo_demo = nnunetv2_rndpo.demo:main",
            "nnUNetv2_rndpo_make_dataset = nnunetv2_rndpo.commands:main_make_dataset",
            "nnUNetv2_rndpo_proposals = nnunetv2_rndpo.commands:main_proposals",
            "nnUNetv2_rndpo_judge = nnunetv2_rndpo.commands:main_judge",
            "nnUNetv2_rndpo_mine = nnunetv2_rndpo.commands:main_mine",
            "nnUNetv2_rndpo_train_judge = nnunetv2_rndpo.commands:main_train_judge",
            "nnUNetv2_rndpo_clean = nnunetv2_rndpo.commands:main_clean",
            "nnUNetv2_rndpo_study = nnunetv2_rndpo.study:main",
        ]
    },
)
