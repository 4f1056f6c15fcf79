"""Errors that mean "bad input or configuration", raised at load time with a one-line message.

All derive from ``ValueError`` so that CLIs can print ``str(exc)`` without a traceback.
"""

from __future__ import annotations


class WorkerError(ValueError):
    """Base class: a worker cannot be set up or fed as asked."""


class DeviceError(WorkerError):
    """A device or dtype was asked for that this machine cannot provide."""


class BackendError(WorkerError):
    """A model backend cannot be loaded or asked to run as requested."""


class BatchTooLargeError(BackendError):
    """A batch exceeds the largest batch size the backend was configured for."""


class ImageInputError(WorkerError):
    """An image given to the discriminator is unreadable, corrupt or of the wrong size."""


class DiscriminatorError(WorkerError):
    """The discriminator (CLIP tower or head) cannot be loaded or trained as asked."""
