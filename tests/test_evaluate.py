"""What users take for granted of a registration: the consistency metrics of regtune.evaluate."""

import torch

from regtune.config import ModelConfig
from regtune.evaluate import consistency
from regtune.model import RegNet


def _net(symmetric: bool) -> RegNet:
    torch.manual_seed(0)
    net = RegNet(ModelConfig(enc=(8, 8), dec=(8, 8, 8), int_steps=5, symmetric=symmetric))
    with torch.no_grad():  # off the identity start: a field of a few voxels
        net.flow.weight.normal_(0, 0.3)
    return net.eval()


def test_self_registration_dice_is_one_only_when_the_labels_stay_put(vols):
    pairs = [(0, 1), (2, 3)]
    plain = consistency(_net(False), vols, pairs, downsample=2)
    sym = consistency(_net(True), vols, pairs, downsample=2)
    # a plain network moves an image registered to itself, so its own labels no longer overlap fully
    assert all(r["self_disp"] > 0.1 for r in plain)
    assert all(r["self_dice"] < 0.99 for r in plain)
    # the symmetric network returns exactly the identity for identical images, and exact inverses
    assert all(r["self_disp"] == 0.0 and r["self_dice"] == 1.0 for r in sym)
    assert all(r["ic_error"] < 0.2 * p["ic_error"] for r, p in zip(sym, plain))


def test_the_consistency_pass_reports_progress_too(vols, monkeypatch):
    """With refinement the swapped and self pairs take twice the main pass: a user sees both passes move."""
    import regtune.evaluate as ev
    from regtune.evaluate import evaluate_pairs

    seen: dict[str, int] = {}

    class Bar:
        def __init__(self, desc):
            self.desc = desc

        def update(self, n):
            seen[self.desc] = seen.get(self.desc, 0) + n

        def close(self):
            pass

    monkeypatch.setattr(ev, "progress_bar", lambda enabled, total, desc, unit: Bar(desc) if enabled else None)
    evaluate_pairs(_net(False), vols, [(0, 1), (2, 3), (4, 5)], 2, with_hd95=False, with_consistency=True, progress=True,
                   batch_size=2)
    assert seen == {"evaluating": 3, "consistency (swapped and self pairs)": 3}
