"""Configuration: JSON-schema validation plus the cross-field rules a schema cannot say.

Errors name the offending key (as a dotted path) and the file it came from, because a
Snakemake user sees only the message, not a traceback into our code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import jsonschema
import yaml


def _resource(packaged: str, in_checkout: str) -> Path:
    """A file shipped in the wheel (``cdssl/<packaged>``) or, in a checkout, at ``in_checkout``."""
    here = Path(__file__).resolve().parent
    wheel = here / packaged
    return wheel if wheel.exists() else here.parents[1] / in_checkout


SCHEMA_PATH = _resource("_schemas/config.schema.yaml", "workflow/schemas/config.schema.yaml")
PAPER_CONFIG = _resource("_config/config.yaml", "config/config.yaml")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names key and file."""


def _path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def load_schema(path: Path | str = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def schema_backbones(schema: dict | None = None) -> tuple[str, ...]:
    """The backbones the schema allows for ``models.backbone``: the one list of them
    (the workflow's wildcard, build_network's error and the migration tool read it)."""
    backbone = (schema or load_schema())["properties"]["models"]["properties"]["backbone"]
    return tuple(backbone["oneOf"][0]["enum"])


def validate_config(config: dict, source: str = "<config>", schema_path: Path | str = SCHEMA_PATH) -> dict:
    """Validate ``config`` in place (defaults filled) and return it.

    Raises ConfigError naming ``source`` and the dotted key path of the first problem
    (jsonschema's own messages name neither); a valid config then gets the schema's
    defaults from Snakemake's validator, and our cross-field rules.
    """
    from snakemake.utils import validate

    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(e.absolute_path)))
    if errors:
        err = errors[0]
        where = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if isinstance(err.schema.get("additionalProperties"), dict):
                extra = []
            msg = f"unknown key(s) {extra} under '{where}'" if extra else err.message
        elif err.validator == "oneOf" and isinstance(err.instance, Mapping):
            msg = f"'{where}' must give exactly one of 'matminer', 'source', 'file' or 'union'"
        elif err.validator in ("oneOf", "anyOf") and err.context:
            # a key of several forms (a value or a list of them): the error of the form the
            # value has, at its deepest key ("'pretrain.sigma.1': -1 must be > 0")
            sub = _specific(err)
            msg = f"'{_path(sub.absolute_path)}': {_message(sub)}"
        else:
            msg = f"'{where}': {_message(err)}"
        raise ConfigError(f"invalid configuration in {source}: {msg}")
    validate(config, str(schema_path), set_default=True)
    _check_references(config, source)
    return config


def _specific(err: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Of a oneOf's branches, the error of the branch whose type the value has (a list
    for the list form, a scalar for the other), deepest first."""
    typed = [e for e in err.context if e.validator != "type"] or list(err.context)
    return max(typed, key=lambda e: len(e.absolute_path))


def _message(err: jsonschema.ValidationError) -> str:
    """jsonschema's message, in the words of a bound where it has one."""
    if err.validator == "exclusiveMinimum":
        return f"{err.instance!r} must be > {err.validator_value}"
    if err.validator == "minimum":
        return f"{err.instance!r} must be >= {err.validator_value}"
    if err.validator == "enum":
        return f"{err.instance!r} is not one of {', '.join(map(str, err.validator_value))}"
    return err.message


def _check_pretrain(config: dict, source: str) -> None:
    pc = config["pretrain"]
    if pc["nodes"] * pc["devices"] > 1 and pc["strategy"] != "ddp":
        raise ConfigError(
            f"invalid configuration in {source}: 'pretrain.strategy' must be ddp for "
            f"{pc['nodes']} node(s) x {pc['devices']} device(s); it is {pc['strategy']!r}"
        )
    for i, k in enumerate(pc.get("export_epochs") or []):
        if k > pc["epochs"]:
            raise ConfigError(
                f"invalid configuration in {source}: 'pretrain.export_epochs.{i}' = {k} exceeds "
                f"'pretrain.epochs' = {pc['epochs']}: a budget is a number of epochs of the one run"
            )
    sizes = pool_sizes(config)
    for i, n in enumerate(pc.get("later_seeds_at") or []):
        if n not in sizes:
            listed = "unset" if sizes == [None] else f"{sizes}"
            raise ConfigError(
                f"invalid configuration in {source}: 'pretrain.later_seeds_at.{i}' = {n} is not "
                f"one of 'pretrain.pool_size' ({listed}): the later seeds repeat listed pool sizes"
            )


def _check_references(config: dict, source: str) -> None:
    _check_pretrain(config, source)
    datasets = config["datasets"]
    pre = config["pretrain"]["dataset"]
    if pre not in datasets:
        raise ConfigError(
            f"invalid configuration in {source}: 'pretrain.dataset' names unknown dataset {pre!r}; "
            f"known: {sorted(datasets)}"
        )
    ft = config["finetune"]
    for i, name in enumerate(ft["datasets"]):
        if name not in datasets:
            raise ConfigError(
                f"invalid configuration in {source}: 'finetune.datasets.{i}' names unknown dataset "
                f"{name!r}; known: {sorted(datasets)}"
            )
        if not datasets[name].get("target"):
            raise ConfigError(
                f"invalid configuration in {source}: 'datasets.{name}.target' is required because "
                f"{name!r} is fine-tuned"
            )
    budget = 1.0 - ft["test_fraction"] - ft["val_fraction"]
    for i, frac in enumerate(ft["fractions"]):
        if frac > budget + 1e-9:
            raise ConfigError(
                f"invalid configuration in {source}: 'finetune.fractions.{i}' = {frac} exceeds "
                f"1 - test_fraction - val_fraction = {budget:.3f}"
            )
    for name, entry in datasets.items():
        if entry.get("union") and entry.get("target"):
            raise ConfigError(
                f"invalid configuration in {source}: 'datasets.{name}.target' must be null: a union "
                f"of datasets is an unlabelled pretraining pool"
            )
        if entry.get("exclude_finetune") and not entry.get("union"):
            raise ConfigError(
                f"invalid configuration in {source}: 'datasets.{name}.exclude_finetune' applies only to a 'union' entry"
            )
        if isinstance(entry.get("exclude_finetune"), list):
            _check_exclude_list(source, datasets, name, ft["datasets"])
    pools: dict[str, tuple] = {}
    for name, entry in datasets.items():
        pool = entry.get("pool")
        if not pool:
            continue
        if pool["take"] not in pool["sizes"]:
            raise ConfigError(
                f"invalid configuration in {source}: 'datasets.{name}.pool.take' = {pool['take']!r} "
                f"is not one of the pool sizes {sorted(pool['sizes'])}"
            )
        src = entry.get("matminer") or entry.get("source") or entry.get("file") or tuple(entry["union"])
        key = (pool["seed"], tuple(sorted(pool["sizes"].items())), entry.get("max_sites"))
        if pools.setdefault(src, key) != key:
            raise ConfigError(
                f"invalid configuration in {source}: 'datasets.{name}.pool' disagrees with another "
                f"entry on source {src!r}: pools of one source need the same seed, sizes and max_sites"
            )


def _check_exclude_list(source: str, datasets: dict, name: str, tasks: list[str]) -> None:
    """A union's listed ``exclude_finetune``: every name is a dataset, and every fine-tuning
    dataset is listed or drawn from a listed one (``_drawn_from``)."""
    listed = datasets[name]["exclude_finetune"]
    unknown = [d for d in listed if d not in datasets]
    if unknown:
        raise ConfigError(
            f"invalid configuration in {source}: 'datasets.{name}.exclude_finetune' names "
            f"{', '.join(map(repr, unknown))}, not under 'datasets'"
        )
    missing = [
        d
        for d in tasks
        if d not in listed and d != name and not any(_drawn_from(datasets[d], datasets[x]) for x in listed)
    ]
    if missing:
        raise ConfigError(
            f"invalid configuration in {source}: 'datasets.{name}.exclude_finetune' leaves out "
            f"fine-tuning dataset(s) {', '.join(map(repr, missing))}: pretraining would see their test crystals"
        )


def _drawn_from(entry: dict, listed: dict) -> bool:
    """Whether ``entry`` is ``listed`` plus a seeded draw (``pool``): its crystals are then
    a subset of ``listed``'s, so a union that leaves out ``listed`` leaves them out too, and
    a config can fine-tune on the draw without changing the union (and its pretrainings)."""
    return bool(entry.get("pool")) and not listed.get("pool") and {**entry, "pool": None} == {**listed, "pool": None}


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"invalid configuration in {path}: expected a mapping at the top level")
    return validate_config(config, str(path))


def network_sizes(sizes: Mapping[str, Any]) -> dict[str, Any]:
    """A network's keyword arguments from a sizes dict (lists become tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in sizes.items()}


def backbones(config: dict) -> list[str]:
    """``models.backbone`` as a list: one pretraining, grid and analysis per value."""
    backbone = config["models"].get("backbone", "megnet")
    return list(backbone) if isinstance(backbone, list) else [backbone]


def sizes(config: dict, size: str, backbone: str | None = None) -> dict[str, Any]:
    """The ``large`` or ``small`` network of ``backbone`` (default: the config's only one),
    as jobs declare it: the MEGNet entry as it always was, another backbone's entry with
    ``backbone`` added (the name is part of what a job's results depend on)."""
    models = config["models"]
    if backbone is None:
        if len(backbones(config)) > 1:
            raise ConfigError(f"'models.backbone' lists {backbones(config)}: name the backbone of this job")
        (backbone,) = backbones(config)
    if backbone == "megnet":
        return dict(models[size])
    return {"backbone": backbone, **models[backbone][size]}


def model_kwargs(config: dict, mode: str, backbone: str | None = None) -> dict[str, Any]:
    """Network sizes for a mode: ``ssl`` and ``sl_large`` the large, ``sl`` the small."""
    return network_sizes(sizes(config, "small" if mode == "sl" else "large", backbone))


# The job interfaces. Each function returns exactly the settings one job's results depend
# on: Snakemake declares them as the rule's params (so a change reruns exactly the jobs it
# touches), the library takes them as keyword arguments, and the resume fingerprint is
# built from them plus digests of the job's input files.


def data_settings(config: dict, dataset: str) -> dict[str, Any]:
    """``exclude``: the fine-tuning datasets whose crystals a union leaves out (their
    tables are the job's inputs, in this order)."""
    entry = {k: v for k, v in config["datasets"][dataset].items() if k != "units"}  # units only label results
    exclude = excluded_datasets(config, dataset)
    return {"entry": entry, "data_dir": config["data_dir"], "exclude": exclude}


def excluded_datasets(config: dict, dataset: str) -> list[str]:
    """The datasets whose crystals a union leaves out: the run's fine-tuning datasets
    (``exclude_finetune: true``) or the ones it lists."""
    exclude = config["datasets"][dataset].get("exclude_finetune")
    if not exclude:
        return []
    names = exclude if isinstance(exclude, list) else config["finetune"]["datasets"]
    return sorted(set(names) - {dataset})


def graph_settings(config: dict) -> dict[str, Any]:
    return {"cutoff": float(config["graph"]["cutoff"]), "unknown_elements": config["graph"]["unknown_elements"]}


def sigmas(config: dict) -> list[float]:
    """``pretrain.sigma`` as a list: one pretraining (and one set of ssl cells) per value."""
    sigma = config["pretrain"]["sigma"]
    return [float(s) for s in (sigma if isinstance(sigma, list) else [sigma])]


def pretrain_seeds(config: dict) -> list[int]:
    """``pretrain.seed`` as a list: one pretraining (per sigma) and one set of ssl cells per value."""
    seed = config["pretrain"]["seed"]
    return [int(s) for s in (seed if isinstance(seed, list) else [seed])]


def pretraining_runs(config: dict) -> list[tuple[int, int | None]]:
    """The (pretraining seed, pool size) of every pretraining per sigma, seed by seed, then
    pool size by pool size: the first seed at every ``pretrain.pool_size``, each later seed
    at those of ``pretrain.later_seeds_at`` (unset: every size). A second seed where the
    interval needs it most (the largest pool) costs a fraction of one at every size."""
    seeds, sizes = pretrain_seeds(config), pool_sizes(config)
    later = config["pretrain"].get("later_seeds_at")
    later_sizes = sizes if later is None else [n for n in sizes if n in later]
    return [(seed, n) for i, seed in enumerate(seeds) for n in (later_sizes if i else sizes)]


def budgets(config: dict) -> list[int]:
    """``pretrain.export_epochs`` in ascending order; empty when unset (no budget wildcard)."""
    return sorted(int(k) for k in config["pretrain"].get("export_epochs") or [])


def pool_sizes(config: dict) -> list[int | None]:
    """``pretrain.pool_size`` as an ascending list; ``[None]`` (the whole dataset) when unset."""
    size = config["pretrain"].get("pool_size")
    if size is None:
        return [None]
    return sorted(int(n) for n in (size if isinstance(size, list) else [size]))


def fmt_pool_size(size: int | None) -> str:
    """The spelling of a pool size in paths and wildcards: ``1000``, or ``all`` (unset)."""
    return "all" if size is None else str(int(size))


def parse_pool_size(text: str) -> int | None:
    """:func:`fmt_pool_size` read back from a wildcard."""
    return None if text == "all" else int(text)


def fmt_sigma(sigma: float) -> str:
    """The spelling of a sigma in paths and wildcards: ``0.5``, ``1``."""
    return f"{float(sigma):g}"


# One key list per job: a job's settings are the fields of its dataclass. The config
# function below fills every field from the config, the rule declares the result as its
# params (so a change reruns the job), the runner takes it as keyword arguments, and the
# resume identity is the same dataclass's fields (``identity()``). A new field therefore
# reaches all four places at once; only a field marked ``label`` (it names results, it
# does not change them) stays out of the identity.
LABEL = {"label": True}
RECIPE = {"recipe": True}
CAP = {"cap": True}


@dataclass(frozen=True)
class PretrainSettings:
    sizes: dict
    cutoff: float
    sigma: float
    # under a constant learning rate the cap decides only where the run ends: out of the
    # identity, so a raised cap resumes the run (PretrainSettings.identity)
    epochs: int = field(metadata=CAP)
    batch_size: int
    lr: float
    val_fraction: float
    seed: int
    lr_schedule: str = "constant"
    lr_min_factor: float = 0.01
    devices: int = 1
    strategy: str = "auto"
    nodes: int = 1
    # stopping once the validation loss is flat (the paper trains a fixed epoch count);
    # like the fine-tuning recipe, left out at their defaults
    patience: int | None = field(default=None, metadata=RECIPE)
    min_delta: float = field(default=0.0, metadata=RECIPE)
    min_steps: int = field(default=0, metadata=RECIPE)
    # a nested subset of the pretraining dataset (cdssl.pretrain.nested_split); None, the
    # whole dataset, keeps the identity of the runs from before the pool-size axis
    pool_size: int | None = field(default=None, metadata=RECIPE)

    def declared(self) -> dict[str, Any]:
        """The rule's params and the identity's settings. ``nodes`` only when above 1, and
        the stopping keys and the pool size only when set: they came after results existed, and those keep
        their identity."""
        values = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get("recipe") and getattr(self, f.name) == f.default)
        }
        if values["nodes"] == 1:
            del values["nodes"]
        return values

    def identity(self) -> dict[str, Any]:
        """The checkpoint folder's identity: the declared settings, less the epoch cap
        under a constant learning rate, where the cap decides only when the run ends, so
        a raised cap resumes the finished run (the budgets' epochs are not settings at
        all: cdssl.selection picks them from the one run)."""
        values = self.declared()
        if self.lr_schedule == "constant":
            for f in fields(self):
                if f.metadata.get("cap"):
                    del values[f.name]
        return values


@dataclass(frozen=True)
class FinetuneSettings:
    sizes: dict | None  # None for ssl: the sizes come with the encoder it loads
    cutoff: float
    epochs: int
    batch_size: int
    lr: float
    test_fraction: float
    val_fraction: float
    patience: int | None = None
    min_steps: int = 0
    # the recipe beyond the paper's (constant Adam, every weight trained alike); their
    # defaults are the paper's, and a key at its default is left out of the declared
    # settings and the identity, so results from before the key existed stay valid
    lr_schedule: str = field(default="constant", metadata=RECIPE)
    lr_min_factor: float = field(default=0.01, metadata=RECIPE)
    weight_decay: float = field(default=0.0, metadata=RECIPE)
    encoder_lr_factor: float = field(default=1.0, metadata=RECIPE)
    freeze_encoder: bool = field(default=False, metadata=RECIPE)
    units: str = field(default="", metadata=LABEL)
    # what the exported model needs to answer for new crystals (cdssl.inference): the
    # target, its transform (undone there) and the data stage's site cap
    target: str = field(default="", metadata=LABEL)
    transform: str = field(default="none", metadata=LABEL)
    max_sites: int | None = field(default=None, metadata=LABEL)

    def declared(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.metadata.get("recipe") and getattr(self, f.name) == f.default)
        }

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.declared().items() if not FINETUNE_FIELDS[k].metadata.get("label")}


FINETUNE_FIELDS = {f.name: f for f in fields(FinetuneSettings)}


def pretrain_settings(
    config: dict,
    sigma: float | None = None,
    seed: int | None = None,
    backbone: str | None = None,
    pool_size: int | str | None = None,
) -> dict[str, Any]:
    """One pretraining's settings; ``sigma``, ``seed``, ``backbone`` and ``pool_size`` (a
    size, or its wildcard spelling) pick one value of a ``pretrain.sigma``,
    ``pretrain.seed``, ``models.backbone`` or ``pretrain.pool_size`` list (default: the
    only one). Every other field is the ``pretrain`` section's key of that name."""
    if sigma is None:
        (sigma,) = sigmas(config)
    if seed is None:
        (seed,) = pretrain_seeds(config)
    if pool_size is None:
        (pool_size,) = pool_sizes(config)
    elif isinstance(pool_size, str):
        pool_size = parse_pool_size(pool_size)
    values = {
        "sizes": sizes(config, "large", backbone),
        "cutoff": float(config["graph"]["cutoff"]),
        "sigma": float(sigma),
        "seed": int(seed),
        "pool_size": pool_size,
    }
    values.update({f.name: config["pretrain"][f.name] for f in fields(PretrainSettings) if f.name not in values})
    return PretrainSettings(**values).declared()


def pretrain_resources(config: dict) -> dict[str, Any]:
    """The pretrain rule's SLURM geometry (Snakemake SLURM executor resources).

    One rank per device. Several ranks make it an "MPI" job for the executor: one
    allocation of ``nodes`` nodes with ``devices`` tasks on each, in which the rule itself
    starts the ranks with srun (cdssl.distributed). On GPUs, ``gres=gpu:<devices>`` asks
    for the devices on every node (``--gres`` counts per node; the ``gpu`` resource would
    count for the whole job and let SLURM spread the GPUs unevenly). The executor would
    also turn ``tasks`` into ``--ntasks-per-gpu``; ``tasks_per_gpu=0`` keeps it from that.
    """
    pc = config["pretrain"]
    nodes, devices = int(pc["nodes"]), int(pc["devices"])
    res: dict[str, Any] = {"nodes": nodes}
    if nodes * devices > 1:
        res["mpi"] = "srun"
        # the executor refuses tasks_per_node=1 for MPI jobs: one device per node is
        # asked as nodes tasks on nodes nodes, which SLURM can only place one per node
        if devices > 1:
            res["tasks_per_node"] = devices
        else:
            res["tasks"] = nodes
    if config["accelerator"] != "cpu":
        res["gres"] = f"gpu:{devices}"
        res["tasks_per_gpu"] = 0
    return res


def probe_settings(config: dict, backbone: str | None = None) -> dict[str, Any]:
    ac = config["analysis"]
    return {
        "sizes": sizes(config, "large", backbone),
        "cutoff": float(config["graph"]["cutoff"]),
        "max_structures": ac["probe_max_structures"],
        "repeats": ac["probe_repeats"],
    }


def finetune_settings(config: dict, dataset: str, mode: str, backbone: str | None = None) -> dict[str, Any]:
    """One fine-tuning job's settings; ``ssl`` takes its sizes from the encoder it loads.
    ``backbone`` picks one of a ``models.backbone`` list (default: the only one). Every
    other field is the ``finetune`` section's key of that name."""
    entry = config["datasets"][dataset]
    values = {
        "sizes": None if mode == "ssl" else sizes(config, "small" if mode == "sl" else "large", backbone),
        "cutoff": float(config["graph"]["cutoff"]),
        "units": entry.get("units", ""),
        "target": entry.get("target") or "",
        "transform": entry.get("transform", "none"),
        "max_sites": entry.get("max_sites"),
    }
    if mode != "ssl":
        # options for a pretrained encoder: a model from scratch is not affected, so they
        # stay out of its settings and identity (changing them reruns ssl cells only)
        values.update(encoder_lr_factor=1.0, freeze_encoder=False)
    values.update(
        {
            f.name: config["finetune"][f.name]
            for f in fields(FinetuneSettings)
            if f.name not in values and f.name in config["finetune"]
        }
    )
    return FinetuneSettings(**values).declared()
