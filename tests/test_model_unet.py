import pytest
import torch

from regtune.config import ModelConfig
from regtune.model import RegNet, predict_field


@pytest.mark.parametrize("int_steps", [0, 7])
def test_starts_near_identity_and_handles_odd_sizes(int_steps):
    net = RegNet(ModelConfig(int_steps=int_steps))
    x = torch.rand(2, 1, 20, 24, 18)
    d = net(x, torch.rand_like(x))
    assert d.shape == (2, 3, 20, 24, 18)
    assert float(d.abs().max()) < 1e-2


def test_predict_field_upsamples_to_input():
    net = RegNet(ModelConfig(enc=(8, 8), dec=(8, 8, 8), int_steps=0))
    x = torch.rand(1, 1, 16, 16, 16)
    assert predict_field(net, x, x, 2).shape == (1, 3, 16, 16, 16)


def test_bad_input_shape():
    with pytest.raises(ValueError, match="got"):
        RegNet(ModelConfig())(torch.rand(1, 2, 8, 8, 8), torch.rand(1, 2, 8, 8, 8))
