"""The failures a user can act on, as types.

Library code raises one of these with a message that says what is wrong and what to do; the
command line's one error boundary (:func:`convnets.cli.main`) prints it as
``convnets CMD: error: MESSAGE`` and exits with status 2. Anything else that escapes is a bug
in convnets and keeps its traceback.

Each class also derives from the built-in exception callers would have caught before it existed
(``ValueError``, ``KeyError``...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ConvnetsError(Exception):
    """Base of every expected failure: bad input, missing files, a run that cannot continue."""


class ConfigError(ConvnetsError, ValueError):
    """An option, config field or argument with a value it cannot take; the message gives the allowed range."""


class ConfigMismatchError(ConfigError):
    """Model and data (or a run being resumed) do not fit; the message says what to change."""


class RunDirectoryError(ConvnetsError):
    """An output directory that cannot be written: someone else's files, another process writing it."""


class DataError(ConvnetsError, ValueError):
    """A dataset that cannot be read, or cannot make the classifier asked for."""


class WeightsError(ConvnetsError, ValueError):
    """A weights file, URL or tag that cannot be used (unreadable, unknown, damaged, implausible)."""


class WeightsMismatchError(WeightsError):
    """A state dict that does not fit the model; the message lists the keys that differ."""


class LayoutError(WeightsError):
    """A state dict whose layout is unknown, or with keys that no rename rule covers."""


class DownloadError(ConvnetsError, ConnectionError):
    """A download that failed, stalled past its deadline, or gave a file with the wrong checksum."""


class UnknownModelError(ConvnetsError, KeyError):
    """A model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class InputShapeError(ConvnetsError, ValueError):
    """An input the model cannot take (its shape, type or device); the message names what it expects."""


class TrainingDiverged(ConvnetsError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the checkpoint kept."""


class ExportMismatchError(ConvnetsError, RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


class MissingDependencyError(ConvnetsError, ModuleNotFoundError):
    """An optional package a feature needs is not installed; the message names the extra to install."""


class UnknownArgumentError(ConfigError, TypeError):
    """A keyword argument a model builder does not take; the message lists the ones it does.

    Also a ``TypeError``, which Python raises for an unexpected keyword argument.
    """
