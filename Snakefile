# CDSSL: crystal denoising self-supervised learning on MatGL networks (MEGNet, the paper's).
# Run: snakemake --cores all --configfile config/demo.yaml
# Without --configfile the paper's config/config.yaml is used (see workflow/rules/common.smk).
from snakemake.utils import min_version

# `use rule ... with`, the SLURM executor plugin and --report layouts as pinned
min_version("9.0")


# the paper's run when no --configfile is given; a --configfile replaces it (the profile
# sets replace-workflow-config), and --config key=value applies on top of either
# (beside this file, whatever the working directory: --directory runs elsewhere)
configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/graphs.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/blend.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        all_targets(),
    default_target: True


rule figures:
    input:
        every_backbone(analysis_targets()) + comparison_targets(),
