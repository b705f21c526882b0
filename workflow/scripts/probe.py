"""Rule probe: ridge probes on frozen embeddings of unseen crystals (cdssl.probes)."""

from _bootstrap import start

start(snakemake)
from cdssl.probes import run_probes

encoders = snakemake.params.encoders
run_probes(
    [e["path"] for e in encoders],
    snakemake.input.graphs,
    snakemake.input.split,
    list(snakemake.input.finetune_graphs),
    # one {featurizer: file} per dataset: the pool, then the fine-tuning sets
    feature_files=[f for f in snakemake.params.features.values() if f],
    **snakemake.params.settings,
    sigmas=[e["sigma"] for e in encoders],
    budgets=[e["budget"] for e in encoders],
    pool_sizes=[e["pool_size"] for e in encoders],
    probe_csv=snakemake.output.probe,
    embeddings_npz=snakemake.output.embeddings,
)
