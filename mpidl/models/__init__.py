"""Built-in models, one file per family, each registered exactly as a model of your own is
(:func:`register`); ``--model FILE.py:FUNCTION`` builds a factory of yours the same way."""

from mpidl.models.base import (MODELS, Model, ModelSpec, build_model, is_factory_path, load_factory, register,
                               spec_for)
from mpidl.models import classic, conv, resnet, sequence, vae  # noqa: F401  (registration)

__all__ = ["MODELS", "Model", "ModelSpec", "build_model", "register", "spec_for", "load_factory",
           "is_factory_path"]
