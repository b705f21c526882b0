"""Prediction with fine-tuned models on new crystals: cdssl.predict and cdssl-predict."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdssl.config import finetune_settings
from cdssl.finetune import run_finetune


@pytest.fixture(scope="module")
def runs(small_cache_path, test_config, tmp_path_factory):
    """Two seeds of one real sl cell, laid out as the workflow lays out a fraction's folder."""
    import copy

    config = copy.deepcopy(test_config)
    config["finetune"].update(epochs=2, batch_size=8)
    root = tmp_path_factory.mktemp("runs") / "0.5"
    for seed in (0, 1):
        d = root / str(seed) / "sl"
        run_finetune(
            small_cache_path,
            dataset="dielectric",
            fraction=0.5,
            seed=seed,
            mode="sl",
            **finetune_settings(config, "dielectric", "sl"),
            metrics_json=d / "metrics.json",
            predictions_csv=d / "predictions.csv",
            history_csv=d / "history.csv",
            model_dir=d / "model",
            ckpt_dir=root.parent / "ckpt" / str(seed),
        )
    return root


@pytest.fixture(scope="module")
def new_crystals(small_table, dielectric, tmp_path_factory) -> Path:
    """The small set's crystals as CIF text, one that does not parse and one above the
    training set's 8-site cap."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    big = dielectric[dielectric["structure"].map(len) > 8]["structure"].iloc[0]
    rows = [
        (i, str(CifWriter(Structure.from_dict(s))))
        for i, s in zip(small_table["id"], small_table["structure"], strict=True)
    ]
    rows += [("broken", "data_x\n_cell_length_a 3\n"), ("big", str(CifWriter(big)))]
    path = tmp_path_factory.mktemp("new") / "new.csv"
    pd.DataFrame(rows, columns=["name", "cif"]).to_csv(path, index=False)
    return path


def test_predictions_are_the_runs_own_in_the_datasets_units_with_the_spread_over_models(runs, new_crystals):
    import cdssl

    predictions, skipped = cdssl.predict([runs], [new_crystals], structure_column="cif", id_column="name")
    reasons = dict(zip(skipped["id"], skipped["reason"], strict=True))
    assert set(reasons) == {"broken", "big"} and "more than max_sites 8" in reasons["big"]
    assert len(predictions) == 40 and (predictions["n_models"] == 2).all() and (predictions["units"] == "n").all()
    by_id = predictions.set_index("id")
    for seed in (0, 1):
        # each model's column is its run's own test predictions, back in the units of n
        own = pd.read_csv(runs / str(seed) / "sl" / "predictions.csv").set_index("id")
        column = by_id.loc[own.index, f"{seed}/sl"]
        np.testing.assert_allclose(np.log10(column), own["prediction"], rtol=1e-5, atol=1e-6)
    both = by_id[["0/sl", "1/sl"]].to_numpy()
    np.testing.assert_allclose(by_id["prediction"], both.mean(axis=1))
    np.testing.assert_allclose(by_id["std"], both.std(axis=1))
    assert (by_id["std"] > 0).all()


def test_an_exported_model_loads_in_matgl_and_cif_files_are_read(runs, small_table, tmp_path):
    import matgl
    from pymatgen.core import Structure

    from cdssl.inference import predict

    model = matgl.load_model(runs / "0" / "sl" / "model")
    assert model.__class__.__name__ == "MEGNet"
    files = []
    for i, s in zip(small_table["id"][:3], small_table["structure"][:3], strict=True):
        files.append(tmp_path / f"{i}.cif")
        Structure.from_dict(s).to(filename=str(files[-1]))
    predictions, skipped = predict([runs / "0" / "sl" / "model"], files)
    assert skipped.empty and predictions["id"].tolist() == list(small_table["id"][:3])
    assert predictions.columns[-1] == "sl" and predictions["sl"].notna().all()


@pytest.mark.slow
def test_cdssl_predict_as_a_user_runs_it(runs, new_crystals, tmp_path):
    command = str(Path(sys.executable).parent / "cdssl-predict")
    helptext = subprocess.run([command, "--help"], capture_output=True, text=True)
    assert helptext.returncode == 0 and "--structures" in helptext.stdout
    out = tmp_path / "p.csv"
    args = ["--structures", str(new_crystals), "--structure-column", "cif", "--id-column", "name", "--out", str(out)]
    proc = subprocess.run([command, "--run", str(runs), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(pd.read_csv(out)) == 40 and len(pd.read_csv(tmp_path / "p.skipped.csv")) == 2
    # a run without blends (cdssl-finetune folders): every network, said so
    used, done = proc.stdout.strip().splitlines()[-2:]
    assert used == "model(s) used: 0/sl: 0/sl; 1/sl: 1/sl, the spread over them in 'std'"
    assert done == f"40 predicted -> {out}; 2 skipped -> {tmp_path / 'p.skipped.csv'}"
    # bad input: status 1 and one line saying what is wrong, no traceback
    bad = subprocess.run([command, "--run", str(tmp_path / "nothing"), *args], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    last = bad.stderr.strip().splitlines()[-1]
    assert last == f"cdssl-predict: error: run folder {tmp_path / 'nothing'} does not exist"


def test_several_run_folders_name_each_model_by_its_own_path(runs, small_table, tmp_path):
    from pymatgen.core import Structure

    from cdssl.inference import predict

    path = tmp_path / "one.cif"
    Structure.from_dict(small_table["structure"][0]).to(filename=str(path))
    predictions, _ = predict([runs / "0" / "sl", runs / "1" / "sl"], [path])
    assert list(predictions.columns[-2:]) == ["0/sl", "1/sl"]


def test_any_mix_of_structure_files_and_folders_is_read_file_by_file(runs, small_table, tmp_path):
    """CIF, POSCAR, CONTCAR and .vasp files and folders of them, each read on its own: an
    undecodable file is skipped with its name and reason, the rest predicted as the same
    crystals given as CIF."""
    from pymatgen.core import Structure

    from cdssl.data import DataError
    from cdssl.inference import predict

    crystals = [Structure.from_dict(s) for s in small_table["structure"][:4]]
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    crystals[0].to(filename=str(folder / "a" / "POSCAR"), fmt="poscar")
    crystals[1].to(filename=str(folder / "b" / "POSCAR"), fmt="poscar")
    crystals[2].to(filename=str(folder / "x.vasp"), fmt="poscar")
    (folder / "binary.cif").write_bytes(b"\xff\xfe\x00garbage")
    contcar = tmp_path / "CONTCAR"
    crystals[3].to(filename=str(contcar), fmt="poscar")
    predictions, skipped = predict([runs / "0" / "sl"], [folder, contcar])
    assert sorted(predictions["id"]) == ["CONTCAR", "a/POSCAR", "b/POSCAR", "x"]
    (reason,) = skipped["reason"]
    assert skipped["id"].tolist() == ["binary"] and str(folder / "binary.cif") in reason and "UTF-8" in reason
    cifs = []
    for i, crystal in enumerate(crystals):
        cifs.append(tmp_path / f"c{i}.cif")
        crystal.to(filename=str(cifs[-1]))
    as_cif, _ = predict([runs / "0" / "sl"], cifs)
    order = {"a/POSCAR": "c0", "b/POSCAR": "c1", "x": "c2", "CONTCAR": "c3"}
    ours = predictions.set_index("id")["prediction"].rename(order).sort_index()
    np.testing.assert_allclose(ours, as_cif.set_index("id")["prediction"].sort_index(), rtol=1e-6)
    # an input that yields nothing names the user's file, not a temporary one
    with pytest.raises(DataError, match=f"{folder / 'binary.cif'}: not readable as UTF-8"):
        predict([runs / "0" / "sl"], [folder / "binary.cif"])
    empty = tmp_path / "empty.cif"
    empty.write_text("data_x\n_cell_length_a 3\n")
    with pytest.raises(DataError, match=r"no crystal of .*empty.cif could be read: empty: unparsable"):
        predict([runs / "0" / "sl"], [empty])


def test_predictions_carry_the_datasets_units_with_the_transform_undone():
    from cdssl.inference import output_units

    assert output_units("log10(eV)", "log10") == "eV" and output_units("eV", "none") == "eV"
    assert output_units("GPa", "log10") == "10^(GPa)" and output_units("", "none") == ""
