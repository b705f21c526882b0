"""``cdssl-finetune``: fine-tune an exported CDSSL encoder on your own labelled file.

    cdssl-finetune --encoder results/megnet/pretrain/seed_0/sigma_0.5/pool_size_all/encoder --data mine.csv \\
        --structure-column cif --target band_gap --units eV --fraction 0.7 --seed 0 --out runs/mine

Runs the same data stage, graph stage and fine-tuning code as the workflow's rules; for
a whole grid (fractions x seeds x modes) add the dataset to a config and use Snakemake.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from .config import PAPER_CONFIG, ConfigError, finetune_settings, graph_settings, load_config, validate_config
from .data import DataError, build_table
from .finetune import run_finetune
from .graphs import run_graphs
from .model_files import ModelFileError, read_model_folder
from .utils import set_threads, setup_logging


def finetune_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", help="exported encoder directory (matgl.load_model); omit for --mode sl")
    ap.add_argument("--data", required=True, help="CSV/JSON/extxyz with structures and a target")
    ap.add_argument("--structure-column", default="structure")
    ap.add_argument("--id-column")
    ap.add_argument("--target", required=True)
    ap.add_argument("--transform", choices=["none", "log10"], default="none")
    ap.add_argument("--units", default="")
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["ssl", "sl", "sl_large"], default="ssl")
    ap.add_argument("--epochs", type=int, help="default: the config's finetune.epochs")
    ap.add_argument(
        "--config", default=str(PAPER_CONFIG), help="model sizes and training settings (default: the paper's)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True, help="output directory")
    return ap


def finetune_main(argv: list[str] | None = None) -> None:
    """The console script: one line on stderr and status 1 for bad input (a config, a data
    file or a model folder that cannot be used); returns None otherwise, since a console
    script's return value becomes its exit status (a dict would exit with status 1 after a
    good run)."""
    try:
        finetune(argv)
    except (ConfigError, DataError, ModelFileError) as exc:
        sys.exit(f"cdssl-finetune: error: {exc}")


def finetune(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, fine-tune, return the metrics (what finetune_main runs)."""
    args = finetune_parser().parse_args(argv)
    if args.encoder:
        # refused before any work when a file of it could choose what code runs
        read_model_folder(args.encoder)

    out = Path(args.out)
    log = setup_logging(out / "finetune.log")
    set_threads(args.threads)
    config = copy.deepcopy(load_config(args.config))
    entry = {
        "file": args.data,
        "structure_column": args.structure_column,
        "id_column": args.id_column,
        "target": args.target,
        "transform": args.transform,
        "units": args.units,
    }
    config["datasets"]["user"] = entry
    config["finetune"].update(datasets=["user"], fractions=[args.fraction], seeds=[args.seed], modes=[args.mode])
    if args.epochs:
        config["finetune"]["epochs"] = args.epochs
    validate_config(config, f"{args.config} + command line")
    # the same settings functions the Snakemake rules declare as params
    table, dropped = build_table("user", config["datasets"]["user"])
    run_graphs(
        table, out / "graphs.pt", out / "skipped.csv", **graph_settings(config), dropped=dropped, processes=args.threads
    )
    metrics = run_finetune(
        out / "graphs.pt",
        dataset="user",
        fraction=args.fraction,
        seed=args.seed,
        mode=args.mode,
        **finetune_settings(config, "user", args.mode),
        accelerator=config["accelerator"],
        encoder_dir=args.encoder,
        metrics_json=out / "metrics.json",
        predictions_csv=out / "predictions.csv",
        split_csv=out / "split.csv",
        history_csv=out / "history.csv",
        model_dir=out / "model",
        ckpt_dir=out / "checkpoints",
    )
    log.info("metrics written to %s", out / "metrics.json")
    return metrics


if __name__ == "__main__":
    finetune_main()
