"""Can the label generator find a task's fine structure on its own? A diagnostic, not a benchmark of labels.

The generator alone (no multi-task network, no meta-signal) is trained under the label terms of the
defaults (block usage 2, sharpness 1, neighbour consistency 1) on a label-quality task's training set,
and the within-class NMI of its argmax labels with the fine labels is printed every 100 steps, with
the neighbours' purity (the fraction of neighbour pairs that share a fine label). It separates two
causes of labels that do not follow the data: wrong neighbours, or a generator that cannot learn
from right ones. This is how `--gen-input shape` was found (docs/label_quality.md, digits in colour):

    python benchmarks/generator_alone.py --task digits-rgb --match aligned --gen-input image
    python benchmarks/generator_alone.py --task digits-rgb --match aligned --gen-input shape
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import label_quality as lq  # noqa: E402

from auxgen import data as D  # noqa: E402
from auxgen import losses  # noqa: E402
from auxgen.compose import hierarchy_for, load_data  # noqa: E402
from auxgen.models import LabelGenerator  # noqa: E402


def within_class_nmi(labels: torch.Tensor, fine: torch.Tensor, y: torch.Tensor) -> float:
    from sklearn.metrics import normalized_mutual_info_score as nmi

    arg, f, yy = labels.argmax(1).numpy(), fine.numpy(), y.numpy()
    return float(np.mean([nmi(f[yy == c], arg[yy == c]) for c in np.unique(yy)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="digits-rgb", choices=list(lq.TASKS))
    ap.add_argument("--match", default="aligned", choices=D.THUMBNAIL_MATCHES)
    ap.add_argument("--gen-input", default="shape", choices=("image", "shape"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    lq.write_task_data([a.task])
    cfg = lq._config(a.task, "maxl", a.seed, lq.TASKS[a.task][2])
    data = load_data(cfg)
    rows = lq._subset(len(data.train), lq.TASKS[a.task][1], a.seed)
    train = data.train if rows is None else data.train.subset(rows)
    hier, _ = hierarchy_for(cfg, data)
    x_all, y, fine = train.images, train.labels, train.fine
    nb = D.same_class_neighbours(x_all, y, torch.arange(len(y)), cfg.neighbours, match=a.match)
    print(f"{a.task}: {len(y)} training images (NMI on them); neighbours by {a.match} share the fine label in "
          f"{float((fine[nb] == fine[:, None]).float().mean()):.0%} of pairs; generator input {a.gen_input}")
    gen = LabelGenerator(cfg.backbone, x_all.shape[1], hier, cfg.width, shape_input=a.gen_input == "shape")
    opt = torch.optim.Adam(gen.parameters(), lr=cfg.gen_lr, weight_decay=cfg.gen_weight_decay)
    g, B, pad = torch.Generator().manual_seed(a.seed), cfg.batch_size, data.pad
    for step in range(a.steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                lab = gen.eval()(x_all, y)
            gen.train()
            h = float(losses.sample_entropy(lab)) / np.log(max(hier.psi))
            print(f"step {step:4d}  NMI {within_class_nmi(lab, fine, y):.3f}  H/max {h:.2f}", flush=True)
        b = torch.randint(0, len(y), (B,), generator=g)
        pair = nb[b, torch.randint(0, nb.shape[1], (B,), generator=g)]
        x = D.apply_views(x_all[b], D.draw_views(B, pad, g, data.flip), pad)
        xp = D.colour_jitter(D.apply_views(x_all[pair], D.draw_views(B, pad, g, data.flip), pad), B, g)
        lab, lab_pair = gen(x, y[b]), gen(xp, y[b])
        loss = (cfg.entropy_weight * losses.block_usage_regulariser(lab, y[b])
                + cfg.sharpness_weight * losses.sample_entropy(lab)
                + cfg.consistency_weight * losses.pair_cross_entropy(lab, lab_pair))
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
