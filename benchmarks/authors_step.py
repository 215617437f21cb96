"""auxgen's exact MAXL iteration against the authors' implementation of one, on the same batch and networks.

The authors' code (github.com/lorenmt/maxl, model_vgg_maxl.py) does, for each batch, a training pass
(both networks forward, the primary/auxiliary gradient cosine with two extra gradient calls,
backward of the multi-task loss into both networks, an SGD step on theta1) and, in a second loop
over the data, a meta pass (both networks forward, the look-ahead gradient with create_graph=True,
a forward at the fast weights, and the double backward of the primary loss plus the entropy term
into theta2). `authors_iteration` is those passes, written here in the authors' order with
auxgen's networks (so both sides run the same convolutions); `auxgen.maxl.maxl_iteration` is
auxgen's (and `fused_iteration`, `--fused-lookahead`, its reordered exact form). Timed
interleaved in one process, median of --repeats after one warm-up round:

    python benchmarks/authors_step.py --models vgg16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import functional_call

from auxgen.hierarchy import Hierarchy
from auxgen.losses import entropy_regulariser, focal_loss
from auxgen.maxl import Nets, fused_iteration, maxl_iteration
from auxgen.models import LabelGenerator, MultiTaskNet
from auxgen.runtime import tune_cpu_allocator
from auxgen.steps import paper_objective as Objective

ALPHA, GAMMA, ENTROPY = 0.01, 2.0, 0.2  # the authors' inner step (their vgg_lr), focal gamma and entropy weight


def authors_iteration(model: MultiTaskNet, gen: LabelGenerator, opt: torch.optim.Optimizer,
                      gen_opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One batch of the authors' two loops: the training pass, then the meta pass (double backward)."""
    shared = [p for p in model.backbone.parameters() if p.requires_grad]
    pri, aux = model(x)
    labels = gen(x, y)
    loss_pri, loss_aux = focal_loss(pri, y, GAMMA), focal_loss(aux, labels, GAMMA)
    g_pri = torch.autograd.grad(loss_pri, shared, retain_graph=True)  # their cosine diagnostic, every batch
    g_aux = torch.autograd.grad(loss_aux, shared, retain_graph=True)
    torch.stack([torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=-1).mean()
                 for a, b in zip(g_pri, g_aux, strict=True) if a.dim() > 1]).mean().item()
    opt.zero_grad()
    gen_opt.zero_grad()
    (loss_pri + loss_aux).backward()  # into both networks, as theirs (the generator's part is discarded)
    opt.step()

    pri, aux = model(x)
    labels = gen(x, y)
    params = dict(model.named_parameters())
    inner = focal_loss(pri, y, GAMMA) + focal_loss(aux, labels, GAMMA)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    fast = {n: p - ALPHA * g for (n, p), g in zip(params.items(), grads, strict=True)}
    stats = {n: None if n.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked") else b
             for n, b in model.named_buffers()}  # their fast forward uses batch statistics only
    pri_fast, _ = functional_call(model, (fast, stats), (x,))
    meta = focal_loss(pri_fast, y, GAMMA) + ENTROPY * entropy_regulariser(labels)
    opt.zero_grad()
    gen_opt.zero_grad()
    meta.backward()
    gen_opt.step()


def compare(backbone: str, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    hier = Hierarchy((5,) * 20)
    model = MultiTaskNet(backbone, 3, hier.num_primary, hier.num_aux).to(device).train()
    gen = LabelGenerator(backbone, 3, hier).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=ALPHA)  # the authors' optimisers
    gen_opt = torch.optim.SGD(gen.parameters(), lr=1e-3, weight_decay=5e-4)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    y = torch.randint(0, hier.num_primary, (batch,), device=device)
    nets, obj = Nets(model, gen, opt, gen_opt), Objective(ALPHA, GAMMA, entropy_weight=ENTROPY)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    arms = {"authors": lambda: authors_iteration(model, gen, opt, gen_opt, x, y),
            "auxgen_exact": lambda: maxl_iteration(nets, x, y, obj),
            "auxgen_fused": lambda: fused_iteration(nets, x, y, obj)}  # --fused-lookahead: exact, reordered
    times: dict[str, list[float]] = {k: [] for k in arms}
    for r in range(repeats + 1):  # the first round warms up
        for name, fn in arms.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg16")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    tuned = tune_cpu_allocator() if args.device == "cpu" else False
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"median of {args.repeats}, allocator tuned: {tuned}")
    for name in args.models.split(","):
        t = compare(name, args.batch, args.repeats, torch.device(args.device))
        print(f"{name:<8} authors {t['authors']:.3f} s  auxgen exact {t['auxgen_exact']:.3f} s "
              f"({t['auxgen_exact'] / t['authors']:.2f} of the authors')  fused {t['auxgen_fused']:.3f} s "
              f"({t['auxgen_fused'] / t['authors']:.2f})", flush=True)


if __name__ == "__main__":
    main()
