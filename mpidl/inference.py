"""mpidl.load: a trained model back from its run folder, ready to predict."""

from __future__ import annotations

import json
import os

import numpy as np

from mpidl.data.base import prepare_inputs
from mpidl.data.normalize import Normalizer
from mpidl.errors import UserError


class Predictor:
    """A trained model with the input scaling it was trained with."""

    def __init__(self, model, input_scale: float = 1.0, class_names=None, normalizer=None, description=None):
        self.model, self.input_scale, self.class_names = model, float(input_scale), class_names
        self.normalizer = normalizer
        self.description = description or {}
        self.task = model.task

    def inputs(self, x) -> np.ndarray:
        """Raw samples -> model inputs, exactly as training prepared them (scale, --normalize)."""
        return prepare_inputs(x, self.model.store.data.dtype, self.input_scale, self.normalizer)

    def outputs(self, x, batch_size: int = 1000) -> np.ndarray:
        """The network's raw outputs (class scores, probability or values), evaluation mode."""
        outs = [self.model.predict(self.inputs(x[i:i + batch_size]), batch_size)
                for i in range(0, len(x), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0,))

    def class_codes(self, labels) -> np.ndarray:
        """predict()'s labels (names or numbers) as class codes 0, 1, ..."""
        if self.class_names and np.asarray(labels).dtype.kind in "USO":
            codes = {n: i for i, n in enumerate(self.class_names)}
            return np.array([codes[str(v)] for v in labels], dtype=np.int64)
        return np.asarray(labels).astype(np.int64)

    def predict(self, x, batch_size: int = 1000) -> np.ndarray:
        """Class labels for a classifier (names if the training data had them), 0/1 for a
        binary model, values for a regression."""
        out = self.outputs(x, batch_size)
        if self.task == "classification":
            labels = out.argmax(axis=1)
            return np.asarray(self.class_names)[labels] if self.class_names else labels
        if self.task == "binary":
            threshold = 0.0 if self.model.loss_name == "bce_logits" else 0.5
            return (out.reshape(len(out), -1)[:, 0] > threshold).astype(np.int64)
        return out


def load(path: str, net=None) -> Predictor:
    """Rebuild a trained model from a run folder (``--out``) or its weights.npz.

    The architecture comes from model.json beside the weights: a built-in model by name, a
    factory of yours by its import path (``my_models.py:build``). A network built in your
    own script has no such recipe: pass the same, freshly built module as `net`."""
    from mpidl.checkpoint import load_weights
    from mpidl.models.base import Model, build_model
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    weights_path = os.path.join(path, "weights.npz") if os.path.isdir(path) else path
    if not os.path.isfile(weights_path):
        raise UserError(f"mpidl.load: no weights at {weights_path}")
    desc_path = os.path.join(folder, "model.json")
    desc = {}
    if os.path.isfile(desc_path):
        with open(desc_path) as f:
            desc = json.load(f)
    weights = load_weights(weights_path)
    dtype = desc.get("dtype") or str(next(iter(weights.values())).dtype)
    recipe = desc.get("recipe")
    if net is not None:
        model = Model(net, desc.get("loss", "cross_entropy"), desc.get("task"), dtype=dtype)
    elif recipe:
        model = build_model(recipe["model"], recipe["sample_shape"], recipe["n_out"],
                            {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["options"].items()},
                            dtype=dtype, loss=recipe.get("loss"), task=desc.get("task"))
    else:
        raise UserError(f"mpidl.load: {folder} does not say how to rebuild the network (no model.json "
                        "with a recipe: the model was built in a script); pass net=<the same module>")
    mine = {p.name: p for p in model.store.params}
    if set(mine) != set(weights) or any(mine[k].shape != weights[k].shape for k in weights):
        raise UserError(f"mpidl.load: the weights in {weights_path} do not fit this network "
                        f"(names or shapes differ: {sorted(set(mine) ^ set(weights))[:5]})")
    for name, value in weights.items():
        mine[name].data[...] = value
    return Predictor(model, desc.get("input_scale", 1.0), desc.get("class_names"),
                     Normalizer.from_dict(desc.get("normalize")), desc)
