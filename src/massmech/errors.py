"""Every error massmech raises on purpose derives from :class:`MassmechError`.

Each domain error also keeps the builtin base it always had (``RopeError`` is still a
``ValueError``, ``ModelLoadError`` a ``RuntimeError``, ``RunDirError`` an ``OSError``), so code
written as ``except ValueError`` keeps working. The CLI catches :class:`MassmechError` only and
prints its message (exit status 2); anything else is a bug and shows its traceback.

>>> issubclass(RopeError, MassmechError) and issubclass(RopeError, ValueError)
True
"""

from __future__ import annotations


class MassmechError(Exception):
    """Base of every error massmech raises on purpose; the message says what to change."""


class ModelLoadError(MassmechError, RuntimeError):
    """A model spec could not be turned into a model; the message says what to do."""


class RopeError(MassmechError, ValueError):
    """A model has no usable RoPE, or RoPE parameters are inconsistent."""


class CaptureError(MassmechError, ValueError):
    """Statistics cannot be captured or combined as asked (shapes, layers, sites)."""


class CorpusError(MassmechError, ValueError):
    """A text corpus cannot be read or has too little text."""


class DisruptionError(MassmechError, ValueError):
    """A disruption is specified inconsistently."""


class NoOpDisruptionError(MassmechError, RuntimeError):
    """A disruption changed nothing where it should have (a silent no-op is refused)."""


class TaskError(MassmechError, ValueError):
    """A task cannot be built or its data cannot be found."""


class QuantError(MassmechError, ValueError):
    """A quantization method, bit width or group size is not applicable."""


class SmoothingError(MassmechError, ValueError):
    """SmoothQuant/AWQ cannot be applied to this model's blocks."""


class TwinError(MassmechError, ValueError):
    """A twin model or its configuration is inconsistent."""


class RunDirError(MassmechError, OSError):
    """An output folder cannot be used (not massmech's, not writable, or exists)."""


class StoreError(MassmechError, ValueError):
    """A cell store is unusable, or a cell's key or content is inconsistent."""


class ConfigError(MassmechError, ValueError):
    """Invalid arguments, configuration or preset."""


class AnalysisError(MassmechError, ValueError):
    """Statistics or tables cannot be analysed or drawn as asked."""


class IndexRangeError(MassmechError, IndexError):
    """A layer, head, pair or dim index is out of range for this model or table."""


class NotCapturedError(MassmechError, KeyError):
    """A (site, stage) or run label is not in the statistics or tables given."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plain
        return str(self.args[0]) if self.args else ""


class RunNotFoundError(MassmechError, FileNotFoundError):
    """A folder is not the run (or save) it was expected to be; the message names the producer."""


class HookError(MassmechError, RuntimeError):
    """A TransformerLens hook did not fire as required (the model's bridge lacks it)."""


class InputTypeError(MassmechError, TypeError):
    """An argument has a type massmech cannot use; the message says what to pass."""


class StudyInterrupted(MassmechError, KeyboardInterrupt):
    """A study stopped by Ctrl-C: its message says how many cells were saved (a rerun resumes)."""
