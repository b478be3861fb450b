"""The nnU-Net versions this plugin supports, checked before the trainers touch nnU-Net's internals.

The trainers override hooks of ``nnUNetTrainer`` whose names, arguments and order are specific to a
release line (``docs/trainer.md``); another release would fail deep inside a training run, so importing
the trainers with one raises an ``ImportError`` that names the installed and the supported versions.
"""

from __future__ import annotations

import re
from importlib import metadata

# the range setup.py pins: nnunetv2>=2.8.1,<2.9
SUPPORTED_NNUNET = ((2, 8, 1), (2, 9))


def _release(version: str) -> tuple[int, ...]:
    """``"2.8.1"`` → ``(2, 8, 1)``; pre-release and local suffixes (``2.9.0rc1``, ``+cu121``) are dropped."""
    parts = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(parts)


def installed_nnunet_version() -> str | None:
    """The installed ``nnunetv2`` distribution's version, or None if it is not installed as a package."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return None


def require_supported_nnunet(version: str | None = None) -> None:
    """Raises a clear error unless ``version`` (default: the installed one) is in :data:`SUPPORTED_NNUNET`.

    Raises:
        ImportError: nnunetv2 is missing or outside the supported range; the message says which pip
            command installs a supported one.
    """
    version = installed_nnunet_version() if version is None else version
    low, high = SUPPORTED_NNUNET
    wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    if version is None:
        raise ImportError(f"nnunetv2 is not installed; the RN-DPO trainers need nnunetv2{wanted}: "
                          f"pip install 'nnunetv2{wanted}'")
    if not low <= _release(version) < high:
        raise ImportError(
            f"nnunetv2 {version} is installed, but the RN-DPO trainers support nnunetv2{wanted} only (they hook "
            f"into nnUNetTrainer internals of that release). Install a supported version: pip install "
            f"'nnunetv2{wanted}', or use an nnunetv2-rndpo release made for nnunetv2 {version}.")
