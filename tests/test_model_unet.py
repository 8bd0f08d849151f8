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


def test_symmetric_model_is_inverse_consistent_and_identity_on_identical_images():
    torch.manual_seed(0)
    net = RegNet(ModelConfig(enc=(8, 8), dec=(8, 8, 8), int_steps=5, symmetric=True))
    with torch.no_grad():
        net.flow.weight.normal_(0, 0.05)
        a, b = torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16)
        assert torch.allclose(net.velocity(a, b), -net.velocity(b, a), atol=1e-6)
        assert float(net(a, a).abs().max()) == 0.0
        fwd, bwd = net.fields(a, b)
        assert torch.allclose(bwd, net(b, a), atol=1e-6)  # the swapped pair gets exactly exp(-v)
    with pytest.raises(Exception, match="model.symmetric"):
        ModelConfig(int_steps=0, symmetric=True)


@pytest.mark.parametrize("k", [2, 4])
def test_half_resolution_integration_gives_a_full_size_smoother_field(k):
    torch.manual_seed(0)
    cfg = dict(enc=(8, 8), dec=(8, 8, 8), int_steps=5)
    net1, netk = RegNet(ModelConfig(**cfg)), RegNet(ModelConfig(**cfg, int_downsize=k))
    netk.load_state_dict(net1.state_dict())
    with torch.no_grad():
        for n in (net1, netk):
            n.flow.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        a, b = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
        d1, dk = net1(a, b), netk(a, b)
    assert dk.shape == d1.shape == (1, 3, 16, 16, 16)
    rough = lambda d: float((d[:, :, 1:] - d[:, :, :-1]).pow(2).mean())  # noqa: E731
    assert rough(dk) < rough(d1)
