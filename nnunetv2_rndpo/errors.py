"""A user's mistake ends ``nnUNetv2_train ... -tr nnUNetTrainerRNDPO`` with its message, not a traceback.

nnU-Net's ``nnUNetv2_train`` is not ours, so its entry point cannot catch our errors the way the
``nnUNetv2_rndpo_*`` commands do (:func:`nnunetv2_rndpo.commands._main`). Instead the trainer runs the
steps that check the user's input (building the config, preparing the preference phase) inside
:func:`user_errors`: an error of :data:`USER_ERROR_TYPES` raised there by this package's own code is a
message written for the user (STYLE.md), so it is marked, and a ``sys.excepthook`` prints a marked error
that nobody caught as ``ValueError: <message>``; Python then exits with status 1. Anything else (nnU-Net's
or torch's errors, our bugs during training) keeps its full traceback, and ``nnUNet_rndpo_traceback=1``
gives it back for marked errors too.

Why a mark and not a dedicated exception class: the messages are raised in many modules as plain
``ValueError``/``FileNotFoundError`` (and ``BadCaseError``) that tests and the commands catch by type; a
mark set where the error leaves the trainer keeps every type as it is and needs no change where errors
are raised.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

TRACEBACK_ENV_VAR = "nnUNet_rndpo_traceback"
USER_ERROR_TYPES = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError, RuntimeError)
_MARK = "rndpo_user_error"
_PACKAGE = Path(__file__).resolve().parent


def raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by code of this package (its innermost traceback frame is ours)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().parent == _PACKAGE


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` went through :func:`user_errors` as a message for the user."""
    return getattr(error, _MARK, False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Marks our user-facing errors raised inside (see the module docstring) and installs the hook."""
    try:
        yield
    except USER_ERROR_TYPES as error:
        if raised_here(error):
            setattr(error, _MARK, True)
            install_excepthook()
        raise


def format_user_error(error: BaseException) -> str:
    """``ValueError: <message>``: what the hook prints instead of the traceback."""
    return f"{type(error).__name__}: {error}"


_previous_excepthook = sys.__excepthook__


def _excepthook(kind, error, traceback) -> None:
    if is_user_error(error) and not os.environ.get(TRACEBACK_ENV_VAR):
        print(format_user_error(error), file=sys.stderr)
        return
    _previous_excepthook(kind, error, traceback)


def install_excepthook() -> None:
    """Puts :func:`_excepthook` in front of the current ``sys.excepthook`` (once)."""
    global _previous_excepthook
    if sys.excepthook is not _excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
