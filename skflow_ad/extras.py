"""The package's optional dependencies (pip extras): how to install one, and importing with that advice.

Torch-free, so that a deployment install (``skflow-ad[deploy]``) can say what
it lacks. Extras: ``torch`` (fitting, the torch prediction path, model files),
``export`` (ONNX / OpenVINO export, INT8 with NNCF), ``deploy`` (onnxruntime),
``plot``, ``dask``, ``test``.
"""

from __future__ import annotations

from importlib import import_module

__all__ = ["install_command", "require"]


def install_command(extras):
    """``pip install "skflow-ad[<extras>]"``, the command that installs ``extras`` (e.g. ``"torch,export"``)."""
    return f'pip install "skflow-ad[{extras}]"'


def require(module, purpose, extras):
    """Import ``module``, or raise ImportError naming ``purpose`` and the install command of ``extras``."""
    try:
        return import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the package {module!r}, which is not installed: {install_command(extras)}."
        ) from error
