"""Fine-tuning step: graphs/s of the cdssl PropertyModule vs MatGL's ModelLightningModule.

    .venv/bin/python benchmarks/bench_finetune.py --n 1000 --batch 128 [--backbone m3gnet]
Same structures, same network (the backbone's large size by default, --small for the
small one; MEGNet: Tables 2 and 3), batch, Adam, MSE
on standardised targets; both trained by a Lightning Trainer for the same epochs with
validation and checkpointing off, so the ratio is the data path and the step itself. The
two take turns, one fit each from the same initial weights, ``--repeats`` times, so that
a change in the machine's speed during the run reaches both alike; each one's median fit
is reported.
"""

from __future__ import annotations

import statistics
import tempfile
import time

from _common import backbone_sizes, device, environment, matgl_loader, parser, report, table


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--small", action="store_true", help="the small sizes (the SL baseline; MEGNet: Table 3)")
    p.add_argument("--repeats", type=int, default=3, help="fits of each, taking turns; the median is reported")
    args = p.parse_args()
    import lightning as L
    import torch
    from matgl.utils.training import ModelLightningModule
    from torch.utils.data import DataLoader

    from cdssl.finetune import PropertyModule
    from cdssl.graphs import GraphCache, build_cache
    from cdssl.models import build_network

    torch.set_num_threads(args.threads)
    dev = device(args.device)
    environment(args, dev)
    sizes = backbone_sizes(args.backbone, "sl" if args.small else "sl_large")
    t = table(args.n, args.max_sites)
    y = torch.tensor(t["target"].to_numpy(), dtype=torch.float32)
    mean, std = float(y.mean()), float(y.std())

    def fit(module, loader) -> float:
        trainer = L.Trainer(
            max_epochs=args.epochs,
            accelerator="gpu" if dev.type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
        )
        start = time.perf_counter()
        trainer.fit(module, loader)
        return args.epochs * len(t) / (time.perf_counter() - start)

    cache = GraphCache(build_cache(t, 5.0, 1)[0])
    loader = DataLoader(list(range(len(cache))), batch_size=args.batch, shuffle=True, collate_fn=cache.collate)

    def plain_module():
        return ModelLightningModule(
            model=build_network(sizes, 5.0), data_mean=mean, data_std=std, lr=1e-3, loss="mse_loss"
        )

    def our_module():
        return PropertyModule(build_network(sizes, 5.0), mean, std, 1e-3)

    rates: dict[str, list[float]] = {"plain": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        plain_loader = matgl_loader(t, args.batch, tmp)
        for _ in range(args.repeats):
            for name, make, data in (("plain", plain_module, plain_loader), ("ours", our_module, loader)):
                torch.manual_seed(0)
                rates[name].append(fit(make(), data))
    plain, ours = (statistics.median(rates[name]) for name in ("plain", "ours"))
    report(
        [("MatGL ModelLightningModule", plain), ("cdssl PropertyModule", ours)],
        "MatGL ModelLightningModule",
        "graphs/s",
    )


if __name__ == "__main__":
    main()
