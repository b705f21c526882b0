"""Rule probe: ridge probes on frozen embeddings of unseen crystals (cdssl.probes)."""

from _bootstrap import start

start(snakemake)
from cdssl.probes import run_probes

featurizers = snakemake.params.featurizers
files = list(snakemake.input.features)
# one {featurizer: file} per dataset, in the rule's order: the pool, then the fine-tuning sets
step = len(featurizers)
per_dataset = [dict(zip(featurizers, files[i : i + step], strict=True)) for i in range(0, len(files), step or 1)]
run_probes(
    list(snakemake.input.encoders),
    snakemake.input.graphs,
    snakemake.input.split,
    list(snakemake.input.finetune_graphs),
    feature_files=per_dataset if featurizers else [],
    **snakemake.params.settings,
    sigmas=[float(s) for s in snakemake.params.sigmas],
    budgets=snakemake.params.budgets,
    probe_csv=snakemake.output.probe,
    embeddings_npz=snakemake.output.embeddings,
)
