"""cdssl: crystal denoising self-supervised learning (CDSSL) on MatGL MEGNet."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # cdssl.predict without importing torch and MatGL on every `import cdssl`
    if name == "predict":
        from .inference import predict

        return predict
    raise AttributeError(f"module 'cdssl' has no attribute {name!r}")
