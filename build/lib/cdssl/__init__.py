"""cdssl: crystal denoising self-supervised learning (CDSSL) on MatGL MEGNet."""

__version__ = "0.1.0"
