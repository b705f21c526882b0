"""Configs: the shipped ones are valid and hold the paper's numbers; every wrong key is named."""

import copy
import re

import pytest
import yaml

from cdssl.config import ConfigError, load_config, model_kwargs, validate_config


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "test.yaml", "study.yaml", "map.yaml"])
def test_shipped_configs_declare_only_datasets_they_use_and_the_papers_model_sizes(root, name):
    # load_config checks that every name used is declared; this is the converse, which it
    # does not check: an entry no stage reads is a dataset a user would think was run
    config = load_config(root / "config" / name)
    used = {config["pretrain"]["dataset"], *config["finetune"]["datasets"]}
    for entry in config["datasets"].values():  # a pool's listed exclusions are read by its data job
        if isinstance(entry.get("exclude_finetune"), list):
            used |= set(entry["exclude_finetune"])
    assert set(config["datasets"]) == used
    # the sizes are the schema's defaults (written once), not a copy in the config file
    assert "models" not in yaml.safe_load((root / "config" / name).read_text())
    assert model_kwargs(config, "sl_large")["hidden_layer_sizes_conv"] == (128, 128, 64)


def test_paper_config_holds_the_paper_numbers(root):
    c = load_config(root / "config" / "config.yaml")
    assert c["finetune"]["fractions"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert c["finetune"]["seeds"] == [0, 1, 2]
    assert len(c["finetune"]["datasets"]) == 7 and len(c["datasets"]) == 8
    assert c["pretrain"]["sigma"] == 0.5 and c["pretrain"]["epochs"] == 4096 and c["pretrain"]["batch_size"] == 256
    assert c["finetune"]["epochs"] == 96 and c["finetune"]["batch_size"] == 128 and c["finetune"]["lr"] == 1e-3
    assert model_kwargs(c, "ssl")["hidden_layer_sizes_conv"] == (128, 128, 64)
    assert model_kwargs(c, "sl")["hidden_layer_sizes_conv"] == (64, 64, 32)
    assert model_kwargs(c, "sl_large") == model_kwargs(c, "ssl")
    assert c["datasets"]["matbench_phonons"]["transform"] == "log10"


def _write(tmp_path, config):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["finetune"].update(epohcs=3), "epohcs"),
        (lambda c: c.update(treads=2), "treads"),
        (lambda c: c["finetune"].update(fractions=[0.1, 1.5]), "finetune.fractions.1"),
        (lambda c: c["finetune"].update(fractions=[0.0]), "finetune.fractions.0"),
        (lambda c: c["finetune"].update(datasets=["nope"]), "nope"),
        (lambda c: c["pretrain"].update(dataset="missing_set"), "missing_set"),
        (lambda c: c["pretrain"].pop("sigma"), "sigma"),
        (lambda c: c["finetune"].update(modes=["ssl", "dgl"]), "finetune.modes.1"),
        (lambda c: c["datasets"]["dielectric"].update(file="x.csv"), "exactly one of"),
        (lambda c: c["finetune"].update(fractions=[0.75]), "exceeds"),
        (lambda c: c["pretrain"].update(devices=2, strategy="auto"), "'pretrain.strategy' must be ddp"),
        (lambda c: c["pretrain"].update(nodes=0), "pretrain.nodes"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, test_config, mutate, expected):
    config = copy.deepcopy(test_config)
    mutate(config)
    path = _write(tmp_path, config)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_defaults_are_filled(test_config):
    config = copy.deepcopy(test_config)
    del config["accelerator"]
    config["datasets"]["dielectric"].pop("units")
    validate_config(config)
    assert config["accelerator"] == "auto"
    assert config["datasets"]["dielectric"]["units"] == ""


def test_pools_of_one_source_must_agree(test_config):
    config = copy.deepcopy(test_config)
    config["datasets"]["dielectric"]["pool"]["seed"] = 7
    with pytest.raises(ConfigError, match="disagrees"):
        validate_config(config, "x.yaml")


def _schema_keys(schema: dict, node: dict, prefix: str) -> set[str]:
    """Every dotted key path the schema allows; ``<name>`` and ``<size>`` stand for the
    free names under ``datasets`` and ``models``."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    keys = set()
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        keys.add(path)
        keys |= _schema_keys(schema, sub, path + ".")
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "$ref" in extra:
        keys |= _schema_keys(schema, extra, prefix + "<name>.")
    return keys


def test_config_readme_documents_every_schema_key_and_no_other(root):
    from cdssl.config import load_schema

    schema = load_schema(root / "workflow/schemas/config.schema.yaml")
    keys = _schema_keys(schema, schema, "")
    # the two model sizes share one set of keys
    keys = {re.sub(r"^models\.(m3gnet\.|tensornet\.)?(large|small)\.", r"models.\g<1><size>.", k) for k in keys}
    keys = {re.sub(r"^models\.(m3gnet|tensornet)\.(large|small)$", r"models.\1.<size>", k) for k in keys}
    text = (root / "config" / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    # the table of shipped files
    documented -= {str(p.relative_to(root / "config")) for p in (root / "config").rglob("*.yaml")}
    assert keys - documented == set(), "schema keys missing from config/README.md"
    assert documented - keys == set(), "config/README.md documents keys the schema does not have"


@pytest.mark.parametrize(
    "nodes, devices, accelerator, expected",
    [
        (1, 1, "cpu", {"nodes": 1}),
        (1, 1, "auto", {"nodes": 1, "gres": "gpu:1", "tasks_per_gpu": 0}),
        (1, 2, "cpu", {"nodes": 1, "mpi": "srun", "tasks_per_node": 2}),
        (2, 1, "cpu", {"nodes": 2, "mpi": "srun", "tasks": 2}),
        (4, 8, "gpu", {"nodes": 4, "mpi": "srun", "tasks_per_node": 8, "gres": "gpu:8", "tasks_per_gpu": 0}),
    ],
)
def test_pretraining_geometry_becomes_the_rules_slurm_resources(test_config, nodes, devices, accelerator, expected):
    import inspect

    from cdssl.config import pretrain_resources, pretrain_settings
    from cdssl.pretrain import run_pretraining

    config = copy.deepcopy(test_config)
    config["accelerator"] = accelerator
    config["pretrain"].update(nodes=nodes, devices=devices, strategy="ddp")
    assert pretrain_resources(config) == expected
    # the number of nodes is part of the job's identity once it matters, and only then;
    # the settings are what the rule passes to run_pretraining, as they are
    settings = pretrain_settings(config, 0.5)
    assert ("nodes" in settings) == (nodes > 1)
    inspect.signature(run_pretraining).bind("graphs.pt", **settings, history_csv="h", split_csv="s", ckpt_dir="c")


def _another(value):
    """A value of the same kind that differs from ``value``."""
    if isinstance(value, dict):
        return {**value, "added": 1}
    if isinstance(value, str):
        return value + "-other"
    if value is None:
        return 3
    return value * 2 + 1


@pytest.mark.parametrize("job", ["pretrain", "finetune"])
def test_one_key_list_per_job_every_setting_but_a_label_changes_the_identity(test_config, job):
    from dataclasses import fields, replace

    from cdssl.config import FinetuneSettings, PretrainSettings, finetune_settings, pretrain_settings

    config = copy.deepcopy(test_config)
    config["pretrain"]["sigma"] = 0.5
    cls, declared = {
        "pretrain": (PretrainSettings, pretrain_settings(config)),
        "finetune": (FinetuneSettings, finetune_settings(config, "dielectric", "sl")),
    }[job]
    settings = cls(**declared)
    # what the rule declares is the dataclass, field for field (nodes=1 left out by design)
    assert settings.declared() == declared
    # left out at their defaults by design: nodes=1, and the fine-tuning recipe keys
    recipe = {f.name for f in fields(cls) if f.metadata.get("recipe")}
    assert set(declared) | {"nodes"} | recipe >= {f.name for f in fields(cls)}
    for f in fields(cls):
        other = replace(settings, **{f.name: _another(getattr(settings, f.name))})
        assert other.declared() != settings.declared(), f.name  # the rule reruns
        if f.metadata.get("label"):
            assert other.identity() == settings.identity(), f.name
        elif f.metadata.get("cap"):
            # the epoch cap under a constant learning rate: a raised cap resumes the run;
            # under a schedule that spans the epochs it is another run
            assert other.identity() == settings.identity(), f.name
            scheduled = replace(settings, lr_schedule="cosine")
            assert replace(scheduled, **{f.name: getattr(other, f.name)}).identity() != scheduled.identity()
        else:
            assert other.identity() != settings.identity(), f.name  # and its checkpoints are not resumed
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_a_setting'"):
        cls(**declared, not_a_setting=1)


def test_the_papers_fine_tuning_recipe_keeps_the_identity_results_had_before_the_recipe_keys(root):
    """Results fine-tuned before lr_schedule, weight_decay, encoder_lr_factor and
    freeze_encoder existed were the paper's recipe: at those defaults the declared
    settings (Snakemake's params) and the identity (checkpoints) are the old key list, so
    nothing reruns; any other value is in both."""
    from dataclasses import replace

    from cdssl.config import FinetuneSettings, finetune_settings

    config = load_config(root / "config" / "demo.yaml")
    declared = finetune_settings(config, "dielectric_constant", "sl_large")
    old_keys = {
        "sizes",
        "cutoff",
        "epochs",
        "batch_size",
        "lr",
        "test_fraction",
        "val_fraction",
        "patience",
        "min_steps",
        "units",
    }
    # labels (what the exported model needs to read new crystals) are declared, so a new
    # one reruns the job once, but they stay out of the identity: the rerun resumes the
    # finished checkpoints instead of training again
    labels = {"units", "target", "transform", "max_sites"}
    assert set(declared) == old_keys | labels
    settings = FinetuneSettings(**declared)
    assert set(settings.identity()) == old_keys - labels
    for key, value in {
        "lr_schedule": "plateau",
        "weight_decay": 0.01,
        "encoder_lr_factor": 0.1,
        "freeze_encoder": True,
    }.items():
        other = replace(settings, **{key: value})
        assert other.identity()[key] == value and other.declared()[key] == value
    config["finetune"].update(lr_schedule="cosine", encoder_lr_factor=0.1, freeze_encoder=True)
    assert finetune_settings(config, "dielectric_constant", "sl_large")["lr_schedule"] == "cosine"
    # the pretrained encoder's options: in ssl's settings only, so sl cells do not rerun
    assert "encoder_lr_factor" not in finetune_settings(config, "dielectric_constant", "sl_large")
    assert "freeze_encoder" not in finetune_settings(config, "dielectric_constant", "sl")
    ssl = finetune_settings(config, "dielectric_constant", "ssl")
    assert ssl["encoder_lr_factor"] == 0.1 and ssl["freeze_encoder"] is True


def test_the_backbones_models_builds_are_the_ones_the_schema_allows(root):
    # the schema names the backbones once: models.BACKBONES, the workflow's wildcard and
    # the migration tool read them from it; build_network builds each one
    from cdssl.config import load_schema, schema_backbones
    from cdssl.models import BACKBONES, build_network

    backbone = load_schema()["properties"]["models"]["properties"]["backbone"]
    single, listed = backbone["oneOf"]
    assert single["enum"] == listed["items"]["enum"] == list(BACKBONES) == list(schema_backbones())
    smk = (root / "workflow/rules/common.smk").read_text()
    assert 'backbone="|".join(BACKBONE_NAMES)' in smk and "schema_backbones" in smk
    for name in BACKBONES:
        sizes = load_config(root / "config/test.yaml")["models"]
        build_network({"backbone": name, **sizes[name]["small"]} if name != "megnet" else sizes["small"], 5.0)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("models", "backbone", ["megnet", "foo"], "'models.backbone.1': 'foo' is not one of megnet, m3gnet, tensornet"),
        ("models", "backbone", "foo", "'models.backbone': 'foo' is not one of megnet, m3gnet, tensornet"),
        ("pretrain", "sigma", 0, "'pretrain.sigma': 0 must be > 0"),
        ("pretrain", "sigma", [0.5, -1], "'pretrain.sigma.1': -1 must be > 0"),
        ("pretrain", "seed", [0, 0], "'pretrain.seed': [0, 0] has non-unique elements"),
        ("pretrain", "pool_size", 1, "'pretrain.pool_size': 1 must be >= 2"),
        ("pretrain", "pool_size", [100, 1], "'pretrain.pool_size.1': 1 must be >= 2"),
    ],
)
def test_a_key_of_several_forms_reports_the_error_of_the_form_given(root, section, key, value, message):
    """A value or a list of them (oneOf): the error names the deepest key and says what
    is wrong with it, not "is not valid under any of the given schemas"."""
    config = load_config(root / "config" / "test.yaml")
    config[section][key] = value
    with pytest.raises(ConfigError) as err:
        validate_config(config, "mine.yaml")
    assert str(err.value) == f"invalid configuration in mine.yaml: {message}"


def test_later_pretraining_seeds_run_at_the_listed_pool_sizes_and_a_size_not_listed_stops(test_config):
    """pretrain.later_seeds_at: the first seed at every pool size, the later ones at the
    listed sizes only (unset: every size); a size that is not a pool size, or a list with
    no pool sizes at all, stops the check naming the key and the sizes."""
    from cdssl.config import pretraining_runs

    config = copy.deepcopy(test_config)
    config["pretrain"].update(seed=[0, 1, 2], pool_size=[40, 20])
    validate_config(config, "mine.yaml")
    assert pretraining_runs(config) == [(s, n) for s in (0, 1, 2) for n in (20, 40)]
    config["pretrain"]["later_seeds_at"] = [40]
    validate_config(config, "mine.yaml")
    assert pretraining_runs(config) == [(0, 20), (0, 40), (1, 40), (2, 40)]
    config["pretrain"]["later_seeds_at"] = [40, 30]
    with pytest.raises(ConfigError) as err:
        validate_config(config, "mine.yaml")
    assert "'pretrain.later_seeds_at.1' = 30 is not one of 'pretrain.pool_size' ([20, 40])" in str(err.value)
    del config["pretrain"]["pool_size"]
    config["pretrain"]["later_seeds_at"] = [40]
    unset = r"'pretrain.later_seeds_at.0' = 40 is not one of 'pretrain.pool_size' \(unset\)"
    with pytest.raises(ConfigError, match=unset):
        validate_config(config, "mine.yaml")


def test_a_pool_size_is_a_setting_of_its_pretraining_and_unset_keeps_the_earlier_identity(test_config):
    """pretrain.pool_size: a bare value and a list of one are the same run; each size of a
    list is its own job's setting; unset, the declared settings and the identity are those
    of runs from before the key, so they rerun nothing."""
    from cdssl.config import fmt_pool_size, parse_pool_size, pool_sizes, pretrain_settings

    config = copy.deepcopy(test_config)
    config["pretrain"]["sigma"] = 0.5
    unset = pretrain_settings(config)
    assert "pool_size" not in unset and pool_sizes(config) == [None]
    config["pretrain"]["pool_size"] = 40
    bare = pretrain_settings(config)
    config["pretrain"]["pool_size"] = [40]
    assert pretrain_settings(config) == bare and bare["pool_size"] == 40
    config["pretrain"]["pool_size"] = [80, 40]
    assert pool_sizes(config) == [40, 80]
    assert pretrain_settings(config, pool_size="80")["pool_size"] == 80
    assert pretrain_settings(config, pool_size="all") == unset
    assert [fmt_pool_size(n) for n in (None, 40)] == ["all", "40"]
    assert [parse_pool_size(t) for t in ("all", "40")] == [None, 40]


def test_a_pool_excluding_listed_datasets_is_the_same_pool_whichever_of_them_a_config_fine_tunes(root):
    """exclude_finetune as a list (the map's configs): the union's data job gets the same
    settings, so the same pool and pretraining, whether a config fine-tunes on one of the
    listed datasets or on all; a list that misses a fine-tuning dataset, or names an
    unknown one, is refused."""
    from cdssl.config import data_settings

    config = load_config(root / "config/oqmd.yaml")
    listed = ["dielectric_constant", "elastic_log_kvrh", "mp_gap"]
    config["datasets"]["pretrain_pool"]["exclude_finetune"] = listed
    settings = []
    for tasks in (["mp_gap"], listed):
        config["finetune"]["datasets"] = tasks
        validate_config(config, "map.yaml")
        settings.append(data_settings(config, "pretrain_pool"))
    assert settings[0] == settings[1] and settings[0]["exclude"] == sorted(listed)
    config["datasets"]["pretrain_pool"]["exclude_finetune"] = True
    assert data_settings(config, "pretrain_pool")["exclude"] == sorted(listed)
    config["finetune"]["datasets"] = ["mp_gap"]
    assert data_settings(config, "pretrain_pool")["exclude"] == ["mp_gap"]
    config["datasets"]["pretrain_pool"]["exclude_finetune"] = ["mp_gap"]
    config["finetune"]["datasets"] = ["mp_gap", "oqmd_gap"]
    with pytest.raises(ConfigError, match="leaves out fine-tuning dataset.*oqmd_gap"):
        validate_config(config, "map.yaml")
    config["datasets"]["pretrain_pool"]["exclude_finetune"] = ["mp_gap", "oqmd_gap", "nope"]
    with pytest.raises(ConfigError, match="'nope', not under 'datasets'"):
        validate_config(config, "map.yaml")
    # a seeded draw of a listed dataset (the same entry plus `pool`) holds a subset of its
    # crystals: fine-tuning on it keeps the list, and so the pool; another target does not
    config["datasets"]["pretrain_pool"]["exclude_finetune"] = ["mp_gap"]
    draw = {**config["datasets"]["mp_gap"], "pool": {"seed": 0, "sizes": {"map": 10}, "take": "map"}}
    config["datasets"]["mp_gap_draw"] = draw
    config["finetune"]["datasets"] = ["mp_gap_draw"]
    validate_config(config, "map.yaml")
    assert data_settings(config, "pretrain_pool")["exclude"] == ["mp_gap"]
    config["datasets"]["mp_gap_draw"] = {**draw, "target": "e_form"}
    with pytest.raises(ConfigError, match="leaves out fine-tuning dataset.*mp_gap_draw"):
        validate_config(config, "map.yaml")
