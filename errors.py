"""StyleKit's one error type and its kinds (no imports: every module may raise them).

Every refusal the pack makes (a bad input, a weight file it cannot use, a model it does not support,
a file name it will not write) is a :class:`StyleKitError`, so ComfyUI shows its message and a test
can tell the pack's refusals from accidents. It subclasses ``ValueError``: a bad value was given.

ComfyUI prints an exception as ``<module>.<class>: <message>``, and it imports the pack under its
folder path, so the classes say their module is ``StyleKit``: the user reads
``StyleKit.WeightFileError: ...`` rather than ``/.../custom_nodes/ComfyUI-StyleKit.models.x.Error``.
"""


class StyleKitError(ValueError):
    """A refusal by StyleKit; the message names the field or file, what was expected and the fix."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "StyleKit"


StyleKitError.__module__ = "StyleKit"


class InputError(StyleKitError):
    """A node input (image, mask, conditioning, number, text field) the method cannot take."""


class WeightFileError(StyleKitError):
    """A weight file (or its side-car config) that is missing, unreadable, corrupt or of another layout."""


class OutputFileError(StyleKitError):
    """A file name or folder the pack refuses to write to (outside its folder, taken, not writable)."""


class UnsupportedModelError(StyleKitError):
    """A model (family, width, layer layout) the method does not support, or a pairing that does not fit."""
