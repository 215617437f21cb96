"""benchmarks/authors_step.py times the authors' passes: they must compute auxgen's exact MAXL iteration."""

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from authors_step import ALPHA, ENTROPY, GAMMA, authors_iteration  # noqa: E402

from auxgen.hierarchy import Hierarchy  # noqa: E402
from auxgen.maxl import Nets, maxl_iteration  # noqa: E402
from auxgen.models import LabelGenerator, MultiTaskNet  # noqa: E402
from auxgen.steps import paper_objective as Objective  # noqa: E402


def test_the_authors_passes_move_both_networks_as_auxgens_exact_iteration():
    torch.manual_seed(0)
    h = Hierarchy((2, 3, 2))
    f = MultiTaskNet("cnn", 3, 3, h.num_aux, width=4).double().train()
    g = LabelGenerator("cnn", 3, h, width=4).double().train()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64) * 255
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    f2, g2, g_before = copy.deepcopy(f), copy.deepcopy(g), copy.deepcopy(g)
    opt, gen_opt = torch.optim.SGD(f.parameters(), lr=ALPHA), torch.optim.SGD(g.parameters(), lr=0.5)
    authors_iteration(f, g, opt, gen_opt, x, y)
    nets = Nets(f2, g2, torch.optim.SGD(f2.parameters(), lr=ALPHA), torch.optim.SGD(g2.parameters(), lr=0.5))
    maxl_iteration(nets, x, y, Objective(ALPHA, GAMMA, entropy_weight=ENTROPY))
    for a, b in zip([*f.parameters(), *g.parameters()], [*f2.parameters(), *g2.parameters()], strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # and the generator's step is not empty: the comparison above covers the meta-gradient
    moved = [float((a - b).detach().abs().max()) for a, b in zip(g.parameters(), g_before.parameters(), strict=True)]
    assert max(moved) > 1e-8
