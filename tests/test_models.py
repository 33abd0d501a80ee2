"""Every registered model: right output shape, [0, 1] inputs, normalization inside the model."""

import pytest
import torch

from toughen.models import Normalize, build_model, list_models
from toughen.errors import ToughenUsageError

SMALL_OPTIONS = {"wide_resnet": {"depth": 10, "width": 1}}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_model_maps_inputs_to_logits(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10, mean=[0.5] * shape[0], std=[0.25] * shape[0], **SMALL_OPTIONS.get(name, {}))
    assert isinstance(model[0], Normalize)
    x = torch.rand(3, *shape)
    logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_normalize_is_per_channel():
    layer = Normalize([0.5, 0.0], [0.5, 2.0])
    x = torch.ones(1, 2, 2, 2)
    out = layer(x)
    assert torch.allclose(out[:, 0], torch.ones(1, 2, 2)) and torch.allclose(out[:, 1], torch.full((1, 2, 2), 0.5))


def test_bad_model_names_and_options():
    with pytest.raises(ToughenUsageError, match="choose one of"):
        build_model("resnet9000", (1, 8, 8), 10)
    with pytest.raises(ToughenUsageError, match="6n \\+ 4"):
        build_model("wide_resnet", (3, 32, 32), 10, depth=12)
