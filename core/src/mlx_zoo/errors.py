"""The exception hierarchy: one class per kind of bad input.

Every error a user can provoke with a bad checkpoint, a bad config or a broken plugin is an
:class:`MlxZooError`, and its message names the file, the key and what was expected, so that the
fix is obvious without a traceback. Catch :class:`MlxZooError` to handle all of them.
"""

from __future__ import annotations

from pathlib import Path


class MlxZooError(Exception):
    """Base class of every error raised on bad input."""


# -- config.json -------------------------------------------------------------------------------


class ConfigError(MlxZooError):
    """config.json is missing, not JSON, or a field is absent or of the wrong type.

    Attributes: ``path`` (the file, or None), ``key`` (the key, dotted for nested ones:
    ``rope_scaling.factor``; or None) and ``message`` (what is wrong, without the file and key);
    ``str(error)`` is ``"<path>, key '<key>': <message>"``."""

    def __init__(self, path: Path | str | None, message: str, key: str | None = None):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.message = message
        where = str(self.path) if self.path is not None else "<config>"
        if key is not None:
            where += f", key {key!r}"
        super().__init__(f"{where}: {message}")

    def with_key_prefix(self, section: str) -> ConfigError:
        """The same error with its key named as it sits in ``section`` of config.json
        (``text_config.rope_scaling``) -- for a plugin that reads a nested section on its own;
        the error itself when it names no key."""
        if self.key is None:
            return self
        return ConfigError(self.path, self.message, key=f"{section}.{self.key}")


# -- plugins -----------------------------------------------------------------------------------


class PluginError(MlxZooError):
    """Base class of the errors about finding and importing plugins."""


class PluginNotFoundError(PluginError):
    """No installed (or registered) plugin serves the checkpoint's model_type -- none is
    installed, the ones installed are switched off by ``MLX_ZOO_PLUGINS``, or the distribution
    chosen with ``plugin=`` / ``MLX_ZOO_PREFER`` is not one of them.

    Attributes: ``model_type``; ``installed``, the model types that can be loaded now;
    ``disabled``, the installed distributions providing ``model_type`` that ``MLX_ZOO_PLUGINS``
    (whose value is ``disabled_by``) switches off; ``chosen``, the distribution asked for, and
    ``chosen_by``, where that came from (``"plugin="`` or ``"MLX_ZOO_PREFER"``); ``providers``,
    the enabled distributions that do provide ``model_type``.
    """

    def __init__(self, model_type: str, installed: list[str], hint: str | None = None,
                 path: Path | str | None = None, *, disabled: list[str] | None = None,
                 disabled_by: str | None = None, chosen: str | None = None,
                 chosen_by: str | None = None, providers: list[str] | None = None):
        self.model_type = model_type
        self.installed = installed
        self.disabled = sorted(disabled or [])
        self.disabled_by = disabled_by
        self.chosen = chosen
        self.chosen_by = chosen_by
        self.providers = sorted(providers or [])
        where = f"{path}: " if path is not None else ""
        off = f"disabled by MLX_ZOO_PLUGINS={disabled_by!r}"
        if chosen is not None:
            how = (f"plugin={chosen!r}" if chosen_by == "plugin="
                   else f"{chosen_by}='{model_type}={chosen}'")
            if chosen in self.disabled:
                msg = f"{where}{chosen} (chosen by {how}) provides {model_type!r} but is {off}."
            else:
                msg = (f"{where}{chosen} (chosen by {how}) does not provide model_type "
                       f"{model_type!r}.")
            others = self.providers + [f"{d} ({off})" for d in self.disabled if d != chosen]
            if others:
                msg += " Installed distributions that provide it: " + ", ".join(others) + "."
            elif chosen not in self.disabled:
                msg += " No installed distribution provides it." + self._install(hint)
            super().__init__(msg)
            return
        if self.disabled:
            names = " and ".join(self.disabled)
            verb = "provides" if len(self.disabled) == 1 else "provide"
            super().__init__(f"{where}{names} {verb} {model_type!r} but "
                             f"{'is' if len(self.disabled) == 1 else 'are'} {off}; change "
                             "MLX_ZOO_PLUGINS to load this checkpoint.")
            return
        msg = f"{where}no plugin provides model_type {model_type!r}." + self._install(hint)
        listed = ", ".join(sorted(installed)) if installed else "none"
        msg += f" Installed model types: {listed}."
        super().__init__(msg)

    @staticmethod
    def _install(hint: str | None) -> str:
        return f" Install it with: pip install {hint}." if hint else ""


class PluginConflictError(PluginError):
    """Two or more installed distributions claim the same model_type and none was chosen."""

    def __init__(self, model_type: str, distributions: list[str]):
        self.model_type = model_type
        self.distributions = distributions
        names = " and ".join(sorted(distributions))
        super().__init__(
            f"model_type {model_type!r} is claimed by {names}. Choose one with "
            f"load(..., plugin='{sorted(distributions)[0]}') or the environment variable "
            f"MLX_ZOO_PREFER='{model_type}={sorted(distributions)[0]}', or uninstall the other."
        )


class PluginLoadError(PluginError):
    """A plugin is installed but fails to import, or one of its hooks raised.

    Distinct from :class:`PluginNotFoundError`: the plugin exists but is broken. The original
    exception is chained as ``__cause__``.
    """

    def __init__(self, distribution: str, what: str, cause: BaseException):
        self.distribution = distribution
        super().__init__(f"plugin {distribution!r} is broken: {what} raised "
                         f"{type(cause).__name__}: {cause}")


# -- weights -----------------------------------------------------------------------------------


class WeightsError(MlxZooError):
    """Base class of the errors about safetensors files and their contents."""


class SafetensorsError(WeightsError):
    """A safetensors file or index is missing, truncated, malformed or points outside the model."""

    def __init__(self, path: Path | str, message: str, key: str | None = None):
        self.path = Path(path)
        self.key = key
        where = str(path) + (f", tensor {key!r}" if key is not None else "")
        super().__init__(f"{where}: {message}")


class GGUFError(WeightsError):
    """A GGUF file (or an Ollama store entry pointing at one) is truncated, malformed, of a tensor
    type or architecture nothing installed reads, or its metadata contradicts its tensors.
    ``key`` names the metadata key or tensor, where one is at fault."""

    def __init__(self, path: Path | str, message: str, key: str | None = None):
        self.path = Path(path)
        self.key = key
        where = str(path) + (f", key {key!r}" if key is not None else "")
        super().__init__(f"{where}: {message}")


class WeightMismatchError(WeightsError):
    """The checkpoint's tensors do not match the model's parameters (strict check)."""

    def __init__(self, path: Path | str, missing: list[str], unexpected: list[str],
                 shape_mismatches: list[tuple[str, tuple, tuple]]):
        self.missing = missing
        self.unexpected = unexpected
        self.shape_mismatches = shape_mismatches
        lines = [f"{path}: the weights do not match the model."]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
        for key, got, want in shape_mismatches:
            lines.append(f"  shape of {key!r}: checkpoint has {got}, model expects {want}")
        super().__init__("\n".join(lines))


# -- prompt caches and tokenizers --------------------------------------------------------------


class ModelNotFoundError(MlxZooError):
    """Neither a local directory nor a Hugging Face repo that could be fetched (nor a demo
    checkpoint some installed plugin provides)."""


class CacheFileError(MlxZooError):
    """A saved prompt cache cannot be read back (unknown cache class, bad metadata)."""


class TokenizerError(MlxZooError):
    """The checkpoint's tokenizer cannot be loaded without running code shipped with the model."""


class GenerationArgumentError(MlxZooError, ValueError):
    """An invalid sampling or generation argument (temperature < 0, top_p outside (0, 1], ...)."""


class ShardingError(MlxZooError, ValueError):
    """A model cannot be split over the requested number of processes (tensor parallelism)."""


# -- quantization and saving -------------------------------------------------------------------


class QuantizationError(MlxZooError, ValueError):
    """:func:`mlx_zoo.quantize` was given arguments MLX cannot quantize with (a group size or a
    bit width the mode does not support), or no layer of the model could be quantized."""


class SaveError(MlxZooError):
    """A checkpoint cannot be written: the target is a file, its parent cannot be created or
    written, the disk is full, or the config cannot be serialised. The target is left as it was.
    """

    def __init__(self, path: Path | str, message: str):
        self.path = Path(path)
        super().__init__(f"{path}: {message}")
