"""What cdssl-predict runs on new crystals: a cell's saved models, one by one or blended.

A fine-tuning cell of the workflow holds, beside its networks, the feature baselines and
hybrids of its split and the blend job's choice (cdssl.blend: ``blend/metrics.json``
names every candidate, the blend's weights and the validation-best model). Every saved
model is read so that no file chooses what code runs: networks through
:func:`cdssl.model_files.load_network`, boosting and ridge through skops' format with an
allowlist (:func:`cdssl.model_files.load_estimator`), a hybrid's projection as plain
arrays. Predictions are in the model's units (the data stage's transform applied); the
caller undoes the transform.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .graphs import GraphCache
from .model_files import ModelFileError, ModelFolder, load_estimator, load_network, read_model_folder, untrained_twin

KINDS = ("network", "features", "hybrid")


@dataclass(frozen=True)
class Component:
    """One saved model: its kind (:data:`KINDS`), where it is, and its family (a
    features folder holds one model per family)."""

    kind: str
    path: Path
    family: str


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not readable as JSON ({exc})") from None


@dataclass(frozen=True)
class Loaded:
    """A component's files, read and checked (:func:`load_component`): what its
    predictions need besides the crystals."""

    component: Component
    model: Any
    featurizer: str | None = None
    fitted: dict[str, np.ndarray] | None = None
    encoder: ModelFolder | None = None
    twin_seed: int | None = None


def load_component(component: Component) -> Loaded:
    """Every file of one saved model read and checked, before any crystal is read: a
    file that could choose code is refused (:class:`ModelFileError`) here."""
    path = component.path
    if component.kind == "network":
        return Loaded(component, load_network(path).eval())
    if component.kind == "features":
        info = _json(path / "models.json").get("cdssl", {})
        entry = info.get("models", {}).get(component.family)
        if info.get("kind") != "features" or not isinstance(entry, dict):
            raise ModelFileError(f"{path / 'models.json'}: holds no model {component.family!r}")
        return Loaded(component, load_estimator(path / Path(entry["file"]).name), featurizer=entry["featurizer"])
    if component.kind == "hybrid":
        info = _json(path / "hybrid.json").get("cdssl", {})
        if info.get("kind") != "hybrid":
            raise ModelFileError(f"{path / 'hybrid.json'}: not a hybrid model's description")
        try:
            with np.load(path / "components.npz", allow_pickle=False) as stored:
                fitted = {k: stored[k] for k in ("keep", "mean", "std", "center", "axes")}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFileError(f"{path / 'components.npz'}: not the hybrid's projection ({exc})") from None
        seed = info.get("untrained_seed")
        return Loaded(
            component,
            load_estimator(path / "boosting.skops"),
            featurizer=info["descriptors"],
            fitted=fitted,
            encoder=read_model_folder(Path(os.path.normpath(path / info["encoder"]))),
            twin_seed=None if seed is None else int(seed),
        )
    raise ModelFileError(f"{path}: unknown kind of model {component.kind!r}")


class NewCrystals:
    """New crystals' graphs, and what the models read of them, each computed once."""

    def __init__(self, cache: GraphCache, batch_size: int = 64) -> None:
        self.cache = cache
        self.batch_size = batch_size
        self._features: dict[str, np.ndarray] = {}
        self._embeddings: dict[tuple[Path, int | None], np.ndarray] = {}

    def features(self, featurizer: str) -> np.ndarray:
        from .features import features

        if featurizer not in self._features:
            self._features[featurizer] = features(self.cache, featurizer)[0]
        return self._features[featurizer]

    def embedding(self, encoder: ModelFolder, twin_seed: int | None) -> np.ndarray:
        """The encoder's crystal embedding, or that of its untrained twin drawn with ``twin_seed``."""
        from .probes import embeddings

        key = (encoder.folder.resolve(), twin_seed)
        if key not in self._embeddings:
            model = encoder.build() if twin_seed is None else untrained_twin(encoder, twin_seed)
            self._embeddings[key] = embeddings(model, self.cache, np.arange(len(self.cache)))
        return self._embeddings[key]

    def network(self, model: Any) -> np.ndarray:
        import torch

        from .models import predict as forward

        out = []
        with torch.no_grad():
            for start in range(0, len(self.cache), self.batch_size):
                batch = self.cache.collate(list(range(start, min(start + self.batch_size, len(self.cache)))))
                out.append(forward(model, batch).double().numpy())
        return np.concatenate(out)


def predict_component(loaded: Loaded, crystals: NewCrystals) -> np.ndarray:
    """One saved model's predictions for every crystal, in the model's units."""
    from .baselines import rounded
    from .hybrid import hybrid_features

    kind = loaded.component.kind
    if kind == "network":
        return crystals.network(loaded.model)
    if kind == "features":
        return loaded.model.predict(rounded(crystals.features(loaded.featurizer)))
    z = crystals.embedding(loaded.encoder, loaded.twin_seed)
    return loaded.model.predict(hybrid_features(crystals.features(loaded.featurizer), z, loaded.fitted))


def blend_files(run: Path) -> list[Path]:
    """The blend jobs' files under a run folder (a cell's seeds), in order."""
    if (run / "blend" / "metrics.json").is_file():
        return [run / "blend" / "metrics.json"]
    return sorted(run.rglob("blend/metrics.json"))


def chosen_models(blend_json: Path, model: str) -> tuple[str, dict[Component, float]]:
    """The model ``model`` names in one seed's blend file: ``best`` (the validation
    choice), ``blend``, or a candidate's label; as components and their weights."""
    meta = _json(blend_json)
    candidates = {
        c["label"]: Component(c["kind"], Path(os.path.normpath(blend_json.parent / c["model"])), c["family"])
        for c in meta.get("candidates", [])
        if c.get("kind") in KINDS
    }
    which = meta.get("chosen") if model == "best" else model
    if which == "blend":
        return which, {candidates[label]: float(w) for label, w in meta["weights"].items()}
    if which in candidates:
        return which, {candidates[which]: 1.0}
    raise ValueError(
        f"{blend_json}: no model {which!r}; choose from best, blend, networks or one of {', '.join(candidates)}"
    )


def plan_models(
    runs: list[str | Path], networks: list[Path], labels: list[str], model: str
) -> dict[str, tuple[str, dict[Component, float]]]:
    """What cdssl-predict runs (:func:`cdssl.inference.predict`'s ``model``): per output
    column (a network by ``labels``, or a seed's cell), which model it is and its
    components with their weights."""
    blends = [(Path(r), f) for r in runs for f in blend_files(Path(r))]
    if model == "networks" or (model == "best" and not blends):
        return {lab: (lab, {Component("network", m, "network"): 1.0}) for lab, m in zip(labels, networks, strict=True)}
    if not blends:
        raise FileNotFoundError(
            f"no blend/metrics.json under {', '.join(map(str, runs))}: --model {model} needs a fraction folder "
            "of a workflow run (results/<backbone>/finetune/<dataset>/<fraction>); --model networks uses "
            "every fine-tuned network"
        )
    plan = {}
    for run, f in blends:
        seed_folder = f.parent.parent
        plan[str(seed_folder.relative_to(run)) if seed_folder != run else seed_folder.name] = chosen_models(f, model)
    return plan
