"""No model folder read by the pipeline or its commands can choose what code runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdssl.model_files import ModelFileError, load_network, read_model_folder
from cdssl.models import build_network

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Payload:
    """A pickled object whose unpickling runs a shell command: what torch.load without
    weights_only would execute."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def good_folder(tmp_path, config) -> Path:
    """A real fine-tuned-model folder: a small MEGNet saved by MatGL, with cdssl's metadata."""
    model = build_network(config["models"]["small"], 5.0)
    info = {"dataset": "d", "target": "n", "transform": "log10", "units": "log10(n)", "max_sites": 8}
    model.save(tmp_path / "run" / "0" / "sl" / "model", metadata={"cdssl": info})
    return tmp_path / "run" / "0" / "sl" / "model"


def crafted(folder: Path, marker: Path, how: str) -> Path:
    """``folder`` made to run ``touch marker`` when read by MatGL's loader: a plain dict in
    model.pt naming os.system, a pickle payload in model.pt, or model.json naming a module."""
    if how == "dict":
        args = torch.load(folder / "model.pt", weights_only=True)
        args["bond_expansion"] = {"@module": "os", "@class": "system", "init_args": {"command": f"touch {marker}"}}
        torch.save(args, folder / "model.pt")
    elif how == "pickle":
        torch.save({"element_types": Payload(marker)}, folder / "model.pt")
    else:
        meta = json.loads((folder / "model.json").read_text())
        meta.update({"@module": "os", "@class": "system"})
        (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize("backbone", ["megnet", "m3gnet", "tensornet"])
def test_a_good_folder_of_every_backbone_loads_as_matgl_loads_it(tmp_path, config, backbone):
    import matgl

    models = config["models"]
    sizes = models["small"] if backbone == "megnet" else {"backbone": backbone, **models[backbone]["small"]}
    build_network(sizes, 5.0).save(tmp_path / backbone)
    ours, theirs = load_network(tmp_path / backbone), matgl.load_model(tmp_path / backbone)
    assert type(ours) is type(theirs)
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())


def test_the_crafted_dict_runs_code_through_matgl_s_own_loader(good_folder, tmp_path):
    """The threat is real: MatGL's load_model calls what model.pt names (this is why
    every loader of the pipeline reads folders through cdssl.model_files)."""
    import matgl

    marker = tmp_path / "ran"
    try:
        matgl.load_model(crafted(good_folder, marker, "dict"))
    except Exception:  # noqa: BLE001  (whether the load goes on after the command ran does not matter here)
        pass
    assert marker.exists()


@pytest.mark.parametrize("how", ["dict", "pickle", "json"])
def test_every_crafted_folder_is_refused_naming_its_file(good_folder, tmp_path, how):
    marker = tmp_path / "ran"
    folder = crafted(good_folder, marker, how)
    with pytest.raises(ModelFileError) as err:
        read_model_folder(folder)
    name = "model.json" if how == "json" else "model.pt"
    assert str(err.value).startswith(f"{folder / name}: ") and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["dict", "pickle"])
def test_the_commands_refuse_a_crafted_folder_in_one_line_with_status_1(good_folder, tmp_path, how, root):
    """cdssl-predict on a run folder holding it and cdssl-finetune with it as --encoder:
    exit 1, one line on stderr naming the file, the command never run."""
    marker = tmp_path / "ran"
    folder = crafted(good_folder, marker, how)
    structures = tmp_path / "s.csv"
    structures.write_text("id,cif\n")
    predict = [
        BIN / "cdssl-predict",
        "--run",
        tmp_path / "run",
        "--structures",
        structures,
        "--out",
        tmp_path / "p.csv",
    ]
    finetune = [BIN / "cdssl-finetune", "--encoder", folder, "--data", root / "tests/data/none.csv", "--target", "n"]
    finetune += ["--out", tmp_path / "ft", "--config", root / "config/test.yaml"]
    for command in (predict, finetune):
        proc = subprocess.run([str(c) for c in command], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 1, (command[0].name, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(folder / "model.pt") in lines[0], (command[0].name, proc.stderr[-2000:])
        assert not marker.exists()


def test_the_probe_refuses_a_crafted_encoder_before_any_work(good_folder, tmp_path, config):
    from cdssl.config import probe_settings
    from cdssl.probes import run_probes

    marker = tmp_path / "ran"
    folder = crafted(good_folder, marker, "dict")
    with pytest.raises(ModelFileError, match="model.pt: argument"):
        run_probes(
            [folder], tmp_path / "absent.pt", tmp_path / "absent.csv", [], **probe_settings(config),
            probe_csv=tmp_path / "probe.csv", embeddings_npz=tmp_path / "e.npz",
        )  # fmt: skip
    assert not marker.exists() and not (tmp_path / "probe.csv").exists()


def test_a_folder_with_a_missing_file_or_foreign_weights_is_refused(good_folder, tmp_path, config):
    partial = tmp_path / "partial"
    shutil.copytree(good_folder, partial)
    (partial / "state.pt").unlink()
    with pytest.raises(ModelFileError, match="state.pt: missing"):
        load_network(partial)
    other = build_network(config["models"]["large"], 5.0)
    torch.save(other.state_dict(), good_folder / "state.pt")
    with pytest.raises(ModelFileError, match="do not fit MEGNet"):
        load_network(good_folder)


def test_a_saved_estimator_reads_back_and_a_crafted_one_is_refused(tmp_path):
    """Boosting and ridge in skops' format: read back equal; a file naming a type beyond
    the allowlist, or a pickle under the name, is refused naming the file, nothing run."""
    import pickle
    import zipfile

    import numpy as np
    from sklearn.ensemble import HistGradientBoostingRegressor

    from cdssl.model_files import load_estimator, save_estimator

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 4)), rng.normal(size=80)
    model = HistGradientBoostingRegressor(max_iter=5, early_stopping=False).fit(x, y)
    save_estimator(model, tmp_path / "m.skops")
    assert np.array_equal(load_estimator(tmp_path / "m.skops").predict(x), model.predict(x))
    with zipfile.ZipFile(tmp_path / "m.skops") as z:
        files = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(files["schema.json"])
    schema.update({"__class__": "Popen", "__module__": "subprocess"})
    files["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(tmp_path / "crafted.skops", "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(ModelFileError, match=r"crafted\.skops: names type\(s\) .*subprocess\.Popen"):
        load_estimator(tmp_path / "crafted.skops")
    marker = tmp_path / "ran"
    (tmp_path / "pickled.skops").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelFileError, match=r"pickled\.skops: not a skops model file"):
        load_estimator(tmp_path / "pickled.skops")
    assert not marker.exists()


def test_a_hybrid_projection_holding_an_object_is_refused(tmp_path):
    import numpy as np

    from cdssl.predictors import Component, load_component

    folder = tmp_path / "hybrid"
    folder.mkdir()
    (folder / "hybrid.json").write_text(json.dumps({"cdssl": {"kind": "hybrid", "encoder": "x", "descriptors": "m"}}))
    marker = tmp_path / "ran"
    np.savez(folder / "components.npz", keep=np.array([Payload(marker)], dtype=object))
    with pytest.raises(ModelFileError, match=r"components\.npz: not the hybrid's projection"):
        load_component(Component("hybrid", folder, "hybrid"))
    assert not marker.exists()
