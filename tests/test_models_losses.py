import math

import pytest
import torch
import torch.nn.functional as F

from auxgen.hierarchy import Hierarchy
from auxgen.losses import block_entropy, entropy_regulariser, focal_loss
from auxgen.models import LabelGenerator, MultiTaskNet, mask_softmax


def test_mask_softmax_zeros_sum_and_large_logits():
    h = Hierarchy((2, 3, 1))
    y = torch.tensor([0, 1, 2, 1])
    for scale in (1.0, 1e4, 1e30):
        logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)) * scale
        p = mask_softmax(logits, y, h.block_id())
        assert torch.isfinite(p).all()
        assert (p[~h.mask(y)] == 0).all()  # exact zeros, not small numbers
        assert torch.allclose(p.sum(1), torch.ones(4))
    p = mask_softmax(torch.tensor([[1e38, -1e38, 0, 0, 0, 0]]), torch.tensor([0]), h.block_id())
    assert p[0, :2].tolist() == [1.0, 0.0]
    # within the block it is the ordinary softmax of the block's logits
    logits = torch.randn(4, 6)
    p = mask_softmax(logits, y, h.block_id())
    assert torch.allclose(p[1, 2:5], torch.softmax(logits[1, 2:5], 0))


def test_mask_softmax_gradient_is_finite_with_empty_classes():
    h = Hierarchy((3, 3))
    logits = torch.randn(4, 6, requires_grad=True)
    labels = mask_softmax(logits, torch.tensor([0, 0, 0, 0]), h.block_id())  # block 1 unused: ybar = 0 there
    entropy_regulariser(labels).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_gamma0_is_cross_entropy_and_soft_targets():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    assert torch.allclose(focal_loss(logits, y, 0.0), F.cross_entropy(logits, y))
    onehot = F.one_hot(y, 5).float()
    assert torch.allclose(focal_loss(logits, onehot, 0.0), F.cross_entropy(logits, y))
    assert torch.allclose(focal_loss(logits, onehot, 2.0), focal_loss(logits, y, 2.0))
    t = torch.softmax(torch.randn(8, 5, generator=g), 1)
    assert torch.allclose(focal_loss(logits, t, 0.0), F.cross_entropy(logits, t))  # soft-target CE
    p = torch.softmax(logits, 1)
    manual = -(t * (1 - p) ** 2 * torch.log(p)).sum(1).mean()
    assert torch.allclose(focal_loss(logits, t, 2.0), manual)
    assert focal_loss(logits, t, 2.0) < focal_loss(logits, t, 0.0)  # focusing down-weights


def test_entropy_terms():
    uniform = torch.full((4, 4), 0.25)
    assert math.isclose(float(entropy_regulariser(uniform)), -math.log(4), rel_tol=1e-6)
    collapsed = F.one_hot(torch.zeros(4, dtype=torch.long), 4).float()
    assert float(entropy_regulariser(collapsed)) == 0.0
    assert torch.allclose(block_entropy(uniform), torch.full((4,), math.log(4)))
    assert torch.equal(block_entropy(collapsed), torch.zeros(4))


@pytest.mark.parametrize("backbone,width", [("cnn", 4), ("vgg16", 8), ("resnet18", 4)])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 20, 20)])
def test_models_take_every_input_shape(backbone, width, shape):
    h = Hierarchy((2, 3))
    x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    f = MultiTaskNet(backbone, shape[0], 2, h.num_aux, width)
    pri, aux = f(x)
    assert pri.shape == (3, 2) and aux.shape == (3, 5)
    g = LabelGenerator(backbone, shape[0], h, width).eval()
    t = g(x, y)
    assert t.shape == (3, 5) and (t[~h.mask(y)] == 0).all()
