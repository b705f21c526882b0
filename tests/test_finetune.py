"""Fine-tuning: splits, initialisation of each mode, determinism."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cdssl.config import finetune_settings
from cdssl.finetune import finetune_split, initial_model, run_finetune
from cdssl.models import encoder_state


def test_splits_share_test_and_nest_training():
    n = 500
    splits = {f: finetune_split(n, 1, f, 0.2, 0.1) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
    tests = {tuple(s[2]) for s in splits.values()}
    vals = {tuple(s[1]) for s in splits.values()}
    assert len(tests) == 1 and len(vals) == 1
    previous = set()
    for f, (train, val, test) in sorted(splits.items()):
        assert len(train) == round(f * n)
        assert previous <= set(train)
        assert not set(train) & set(test) and not set(train) & set(val) and not set(val) & set(test)
        previous = set(train)
    assert not np.array_equal(finetune_split(n, 2, 0.1, 0.2, 0.1)[2], splits[0.1][2])


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory, test_config):
    """A real exported encoder whose weights differ from any fresh initialisation."""
    from cdssl.models import build_model

    torch.manual_seed(123)
    model = build_model(test_config, "ssl")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    path = tmp_path_factory.mktemp("enc") / "encoder"
    model.save(path)
    return path, encoder_state(model)


def test_ssl_starts_from_the_selected_weights_and_sl_does_not(config, encoder_dir):
    path, pretrained = encoder_dir
    torch.manual_seed(0)
    ssl = initial_model("ssl", None, 5.0, path)
    for key, value in encoder_state(ssl).items():
        assert torch.equal(value, pretrained[key]), key
    sl_large = initial_model("sl_large", config["models"]["large"], 5.0, None)
    same_shape = [k for k, v in encoder_state(sl_large).items() if "weight" in k]
    assert all(not torch.equal(encoder_state(sl_large)[k], pretrained[k]) for k in same_shape)
    sl = initial_model("sl", config["models"]["small"], 5.0, None)
    assert sum(p.numel() for p in sl.parameters()) < sum(p.numel() for p in ssl.parameters())


def test_same_seed_gives_identical_metrics(tmp_path, small_cache_path, config):
    config["finetune"].update(epochs=2, batch_size=8)
    config["datasets"]["dielectric"]["units"] = "log10(n)"
    results = []
    for run in ("a", "b"):
        d = tmp_path / run
        m = run_finetune(
            small_cache_path,
            dataset="dielectric",
            fraction=0.5,
            seed=0,
            mode="sl",
            **finetune_settings(config, "dielectric", "sl"),
            metrics_json=d / "m.json",
            predictions_csv=d / "p.csv",
            history_csv=d / "h.csv",
            ckpt_dir=d / "ckpt",
        )
        results.append(m)
    for key in ("test_mae", "val_mae", "best_epoch", "n_train"):
        assert results[0][key] == results[1][key]
    assert results[0]["n_train"] == 20 and results[0]["device"] == "cpu"
    saved = json.loads((tmp_path / "a" / "m.json").read_text())
    assert saved["test_mae"] == results[0]["test_mae"] and saved["mode"] == "sl" and saved["seed"] == 0


def test_cli_finetunes_a_user_csv(tmp_path, small_table, root):
    import pandas as pd
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    from cdssl.cli import finetune

    csv = tmp_path / "mine.csv"
    pd.DataFrame(
        {
            "name": small_table["id"],
            "cif": [str(CifWriter(Structure.from_dict(s))) for s in small_table["structure"]],
            "n": 10 ** small_table["target"],
        }
    ).to_csv(csv, index=False)
    argv = [
        "--data",
        str(csv),
        "--structure-column",
        "cif",
        "--id-column",
        "name",
        "--target",
        "n",
        "--transform",
        "log10",
        "--units",
        "log10(n)",
        "--mode",
        "sl",
        "--epochs",
        "1",
        "--config",
        str(root / "config/test.yaml"),
    ]
    metrics = finetune([*argv, "--out", str(tmp_path / "run")])
    assert metrics["n_train"] == 28 and metrics["units"] == "log10(n)"
    predictions = pd.read_csv(tmp_path / "run" / "predictions.csv")
    counts = predictions["split"].value_counts()
    assert (counts["test"], counts["val"]) == (metrics["n_test"], metrics["n_val"]) and metrics["n_test"] == 8
    assert set(predictions["id"]) <= set(small_table["id"])
    # the installed command, as a shell script calls it: exit status 0 after a good run
    command = Path(sys.executable).parent / "cdssl-finetune"
    proc = subprocess.run([command, *argv, "--out", str(tmp_path / "cli")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["test_mae"] == metrics["test_mae"]


def _cell(tmp_path, cache, config, name):
    d = tmp_path / name
    return run_finetune(
        cache,
        dataset="dielectric",
        fraction=0.5,
        seed=0,
        mode="sl",
        **finetune_settings(config, "dielectric", "sl"),
        metrics_json=d / "m.json",
        predictions_csv=d / "p.csv",
        history_csv=d / "h.csv",
        ckpt_dir=d / "ckpt",
    )


def test_early_stopping_stops_records_why_and_a_rerun_does_not_train_on(tmp_path, small_cache_path, config, caplog):
    import logging

    import pandas as pd

    config["finetune"].update(epochs=40, batch_size=8, lr=3e-2, patience=2, min_steps=0)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        m = _cell(tmp_path, small_cache_path, config, "early")
    h = pd.read_csv(tmp_path / "early" / "h.csv")
    assert m["last_epoch"] < 39 and m["stop"].startswith("early stop: no lower val_mae for 2 epochs")
    assert m["last_epoch"] - m["best_epoch"] == 2 and h["stop"].fillna("").tolist()[:-1] == [""] * m["last_epoch"]
    assert h["stop"].iloc[-1] == m["stop"] and h["steps"].iloc[-1] == m["optimizer_steps"] == 3 * (m["last_epoch"] + 1)
    # the same job again resumes its last checkpoint, sees the stop, and trains no further
    again = _cell(tmp_path, small_cache_path, config, "early")
    assert len(pd.read_csv(tmp_path / "early" / "h.csv")) == len(h) and again["test_mae"] == m["test_mae"]
    # saving and resuming say what they do: no "weights_only was not set" line per checkpoint
    assert "weights_only" not in caplog.text
    # min_steps holds the stop back: 40 epochs x 3 steps is the least that satisfies it
    config["finetune"].update(epochs=6, min_steps=10_000)
    held = _cell(tmp_path, small_cache_path, config, "held")
    assert held["last_epoch"] == 5 and held["stop"] == "max epochs (6) reached"


def test_metrics_carry_the_trivial_baselines_of_the_same_test_set(tmp_path, small_cache_path, config):
    import pandas as pd

    from cdssl.graphs import GraphCache

    config["finetune"].update(epochs=1, batch_size=8)
    m = _cell(tmp_path, small_cache_path, config, "b")
    y = GraphCache.load(small_cache_path).targets.numpy()
    train, val, test = finetune_split(len(y), 0, 0.5, 0.2, 0.1)
    assert m["test_mae_mean_predictor"] == pytest.approx(np.abs(y[test] - y[train].mean()).mean())
    p = pd.read_csv(tmp_path / "b" / "p.csv")
    assert np.allclose(p.loc[p["split"] == "test", "target"], y[test])
    assert np.allclose(p.loc[p["split"] == "val", "target"], y[val])  # what a blend weights on
    assert 0 < m["test_mae_composition"] < 2 * m["test_mae_mean_predictor"]


def test_the_recipe_gives_the_encoder_its_own_rate_and_can_freeze_it(tmp_path, small_cache_path, config, encoder_dir):
    """encoder_lr_factor: two optimiser groups, the readout at lr, the pretrained encoder at
    lr x factor; freeze_encoder: the encoder leaves training unchanged while the readout
    learns; neither applies to a model from scratch."""
    from cdssl.config import FinetuneSettings
    from cdssl.finetune import PropertyModule, recipe_of

    # MEGNet's encoder: everything before the Set2Set readouts and the output MLP
    encoder_prefixes = ("bond_expansion", "embedding", "edge_encoder", "node_encoder", "state_encoder", "blocks")

    path, pretrained = encoder_dir
    model = initial_model("ssl", None, 5.0, path)
    module = PropertyModule(model, 0.0, 1.0, 1e-3, encoder_lr_factor=0.1)
    optimizer = module.configure_optimizers()
    readout, encoder = optimizer.param_groups
    assert readout["lr"] == pytest.approx(1e-3) and encoder["lr"] == pytest.approx(1e-4)
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    assert all(names[id(p)].startswith(encoder_prefixes) for p in encoder["params"])
    assert not any(names[id(p)].startswith(encoder_prefixes) for p in readout["params"])
    assert len(readout["params"]) + len(encoder["params"]) == len(names)
    # the paper's recipe: one group in the model's order (older checkpoints resume)
    plain = PropertyModule(initial_model("ssl", None, 5.0, path), 0.0, 1.0, 1e-3).configure_optimizers()
    assert len(plain.param_groups) == 1 and isinstance(plain, torch.optim.Adam)

    config["finetune"].update(epochs=2, batch_size=8, freeze_encoder=True, encoder_lr_factor=0.5, weight_decay=0.01)
    settings = finetune_settings(config, "dielectric", "ssl")
    job = FinetuneSettings(**settings)
    assert recipe_of(job, "sl")["encoder_lr_factor"] == 1.0 and not recipe_of(job, "sl")["freeze_encoder"]
    run_finetune(
        small_cache_path,
        dataset="dielectric",
        fraction=0.5,
        seed=0,
        mode="ssl",
        encoder_dir=path,
        **settings,
        metrics_json=tmp_path / "m.json",
        predictions_csv=tmp_path / "p.csv",
        history_csv=tmp_path / "h.csv",
        ckpt_dir=tmp_path / "ckpt",
    )
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)["state_dict"]
    encoder_after = {k.removeprefix("model."): v for k, v in best.items() if k.startswith("model.")}
    for key, value in pretrained.items():
        assert torch.equal(encoder_after[key], value), key
    fresh = initial_model("ssl", None, 5.0, path).state_dict()
    assert any(not torch.equal(encoder_after[k], fresh[k]) for k in fresh if k.startswith("output_proj"))


def test_learning_rate_schedules_follow_their_definition(encoder_dir):
    from cdssl.finetune import PropertyModule

    path, _ = encoder_dir
    module = PropertyModule(
        initial_model("ssl", None, 5.0, path), 0.0, 1.0, 1e-3, lr_schedule="cosine", lr_min_factor=0.1, max_epochs=4
    )
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-3) and rates[2] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert rates[4] == pytest.approx(1e-4) and rates[5] == pytest.approx(1e-4)  # held at the floor
    module = PropertyModule(
        initial_model("ssl", None, 5.0, path), 0.0, 1.0, 1e-3, lr_schedule="plateau", lr_min_factor=0.2
    )
    config = module.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["monitor"] == "val_mae"
    rates = []
    for val_mae in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        schedule.step(val_mae)
        rates.append(optimizer.param_groups[0]["lr"])
    # halved after 3 epochs without a lower value (patience 2), never below lr x 0.2
    assert rates[2] == pytest.approx(1e-3) and rates[3] == pytest.approx(5e-4) and rates[-1] == pytest.approx(2e-4)


def test_the_best_epoch_reloads_from_its_checkpoint_alone_and_from_one_written_before(
    tmp_path, small_cache_path, config
):
    """The target's scale and the recipe are stored in every checkpoint: the best epoch
    reloads from its file (no second list of the recipe); a checkpoint written before
    they were stored (as by the pipeline's earlier versions) still reloads, with the
    trained module's own, to the same predictions."""
    from cdssl.finetune import PropertyModule, load_best

    config["finetune"].update(epochs=2, batch_size=16)
    metrics = _cell(tmp_path, small_cache_path, config, "cell")
    best = tmp_path / "cell" / "ckpt" / "best.ckpt"
    stored = torch.load(best, weights_only=True)
    hparams = stored[PropertyModule.CHECKPOINT_HYPER_PARAMS_KEY]
    assert {"mean", "std", "lr", "lr_schedule", "max_epochs"} <= set(hparams) and "model" not in hparams
    model = initial_model("sl", finetune_settings(config, "dielectric", "sl")["sizes"], 5.0, None)
    trained = PropertyModule(
        model, 0.0, 1.0, 1.0, **{k: v for k, v in hparams.items() if k not in ("mean", "std", "lr")}
    )
    module = load_best(trained, best)
    assert float(module.mean) == pytest.approx(hparams["mean"]) and module.lr == hparams["lr"]
    state = {k: v for k, v in module.state_dict().items()}
    older = tmp_path / "older.ckpt"
    torch.save({k: v for k, v in stored.items() if k != PropertyModule.CHECKPOINT_HYPER_PARAMS_KEY}, older)
    again = load_best(PropertyModule(model, hparams["mean"], hparams["std"], hparams["lr"]), older)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    assert metrics["test_mae"] > 0
