"""Reading a MatGL model folder (model.json, model.pt, state.pt) so that no file can choose what code runs.

MatGL's ``load_model`` imports the ``@module`` and calls the ``@class`` that model.json
names, and calls every ``{"@module", "@class", "init_args"}`` dict it finds in model.pt:
a folder copied from elsewhere could name ``os.system``. Every folder the pipeline or
its commands read (a pretrained encoder, a fine-tuned model) goes through
:func:`load_network` instead: the class must be one of the backbones' MatGL classes,
its arguments plain values (numbers, strings, booleans, None, torch dtypes and tuples
or lists of them), both files are read by torch's weights-only reader (tensors and plain types, no
pickled objects), and only then is the class called with those values and given the
tensors. Anything else is refused with :class:`ModelFileError`, naming the file and why.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FILES = ("model.json", "model.pt", "state.pt")
# what a constructor argument may be: plain values, and torch's dtypes (TensorNet's
# ``dtype``), which torch's weights-only reader returns as the dtype itself, never as code
PLAIN = (int, float, bool, str, type(None), torch.dtype)


class ModelFileError(ValueError):
    """A model folder that cannot be read safely: the message names the file and why."""


def network_classes() -> dict[str, type]:
    """The MatGL classes a model folder may name, by class name (the backbones')."""
    from matgl.models import M3GNet, MEGNet, TensorNet

    return {cls.__name__: cls for cls in (MEGNet, M3GNet, TensorNet)}


def _plain(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(_plain(v) for v in value)
    return isinstance(value, PLAIN)


def _read_tensors(path: Path) -> Any:
    """torch's weights-only reader: a pickled object other than tensors and plain types is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a file of tensors and plain values ({first})") from None


def model_class(folder: Path) -> tuple[type, dict]:
    """The class model.json names, if it is one of :func:`network_classes`, and model.json itself."""
    path = folder / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not readable as JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: not a MatGL model description (a JSON object)")
    classes = network_classes()
    name, module = meta.get("@class"), meta.get("@module")
    cls = classes.get(name) if isinstance(name, str) else None
    if cls is None or module not in (cls.__module__, "matgl.models"):
        allowed = ", ".join(f"{c.__module__}.{n}" for n, c in classes.items())
        raise ModelFileError(f"{path}: names {module}.{name}, not a network this pipeline builds ({allowed})")
    version = meta.get("@model_version", 0)
    if not isinstance(version, int) or version > getattr(cls, "__version__", 0):
        raise ModelFileError(f"{path}: model version {version!r}, newer than this MatGL's {name}")
    return cls, meta


@dataclass(frozen=True)
class ModelFolder:
    """A model folder's contents, checked: the class to build, its arguments and weights."""

    folder: Path
    cls: type
    args: dict[str, Any]
    state: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        """The network: the class called with the plain arguments, given the weights."""
        try:
            model = self.cls(**self.args)
            model.load_state_dict(self.state, strict=True)
        except (TypeError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{self.folder}: its arguments or weights do not fit {self.cls.__name__} ({first})"
            ) from None
        return model


def untrained_twin(folder: ModelFolder, seed: int) -> nn.Module:
    """The folder's architecture with fresh weights drawn with ``seed``: the control that
    tells what a pretrained encoder learned from what its architecture gives anyway."""
    torch.manual_seed(seed)
    return folder.cls(**folder.args)


def read_model_folder(folder: str | Path) -> ModelFolder:
    """Every check of :func:`load_network` without building the network (so a job can
    refuse a bad folder before its work starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: not a model folder (a directory with {', '.join(FILES)})")
    for name in FILES:
        if not (folder / name).is_file():
            raise ModelFileError(f"{folder / name}: missing")
    cls, _ = model_class(folder)
    args = _read_tensors(folder / "model.pt")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ModelFileError(f"{folder / 'model.pt'}: not a dict of constructor arguments")
    odd = sorted(k for k, v in args.items() if not k.startswith("@") and not _plain(v))
    if odd:
        raise ModelFileError(
            f"{folder / 'model.pt'}: argument(s) {', '.join(odd)} are not plain values "
            "(a nested object would choose code to call)"
        )
    state = _read_tensors(folder / "state.pt")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{folder / 'state.pt'}: not a dict of tensors")
    return ModelFolder(folder, cls, {k: v for k, v in args.items() if not k.startswith("@")}, state)


def load_network(folder: str | Path) -> nn.Module:
    """The network of a local MatGL model folder, built from plain values only (module docstring)."""
    return read_model_folder(folder).build()


# The types a fitted scikit-learn model of this pipeline holds beyond what skops trusts by
# default: the trees of gradient boosting and numpy's dtype objects (of its node arrays
# and of the scaler's statistics). skops reads a file by rebuilding every object its
# schema names from a list of allowed types, never by unpickling, so a file that names
# anything else (a function, another class) is refused before any of it is built.
ESTIMATOR_TYPES = (
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "numpy.dtype",
)


def save_estimator(model: Any, path: str | Path) -> None:
    """A fitted scikit-learn model in skops' format (a zip of JSON and arrays, no pickle)."""
    import skops.io as sio

    from .utils import atomic_path

    with atomic_path(path) as tmp:
        sio.dump(model, tmp)


def load_estimator(path: str | Path) -> Any:
    """A model saved by :func:`save_estimator`, refused (:class:`ModelFileError`, naming the
    file and the types) if it names a type beyond skops' defaults and :data:`ESTIMATOR_TYPES`."""
    import zipfile

    import skops.io as sio

    path = Path(path)
    try:
        unknown = sorted(set(sio.get_untrusted_types(file=path)) - set(ESTIMATOR_TYPES))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not a skops model file ({type(exc).__name__}: {exc})") from None
    if unknown:
        raise ModelFileError(f"{path}: names type(s) this pipeline does not build: {', '.join(unknown)}")
    try:
        return sio.load(path, trusted=list(ESTIMATOR_TYPES))
    except Exception as exc:  # skops raises its own types for a schema it cannot rebuild
        raise ModelFileError(f"{path}: not readable as a skops model ({type(exc).__name__}: {exc})") from None
