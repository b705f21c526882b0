"""The split-weight MEGNet forward must equal MatGL's own MEGNet.forward, values and gradients."""

import pytest
import torch

from cdssl.graphs import GraphCache
from cdssl.models import build_model, predict, state_attr


@pytest.mark.parametrize("mode", ["ssl", "sl"])
@pytest.mark.parametrize("indices", [[4], list(range(24))], ids=["one graph", "batch"])
def test_forward_and_gradients_equal_matgl(small_cache_path, test_config, mode, indices):
    torch.manual_seed(0)
    model = build_model(test_config, mode)
    batch = GraphCache.load(small_cache_path, 5.0).collate(indices)
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(batch, state_attr=state_attr(batch, model)).reshape(-1)
    ours = predict(model, batch)
    assert torch.allclose(ours, ref, atol=1e-5)
    g_ref = torch.autograd.grad((ref**2).sum(), params)
    g_ours = torch.autograd.grad((predict(model, batch) ** 2).sum(), params)
    for a, b in zip(g_ref, g_ours, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
