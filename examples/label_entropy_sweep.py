"""How sharp do MAXL's labels get? A small, reproducible study on the offline digits set.

    python examples/label_entropy_sweep.py --epochs 6

Trains MAXL (cnn, psi 5, seed 0) for several generator learning rates and entropy weights and
prints, per run, the per-sample entropy of the generated labels inside their block as a fraction
of its maximum (1.0 = uniform inside the block) at each epoch, and the final test accuracy.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from auxgen.config import TrainConfig
from auxgen.runtime import tune_cpu_allocator
from auxgen.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--gen-lrs", default="0.001,0.1,10", help="comma-separated generator learning rates")
    ap.add_argument("--entropy-weights", default="0.2,0", help="comma-separated entropy weights")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tune_cpu_allocator()
    print(f"{'gen_lr':>8} {'lambda':>7}  per-sample entropy / max, by epoch{'':14} test acc")
    with tempfile.TemporaryDirectory() as tmp:
        for ew in (float(v) for v in args.entropy_weights.split(",")):
            for glr in (float(v) for v in args.gen_lrs.split(",")):
                out = Path(tmp) / f"{glr}-{ew}"
                cfg = TrainConfig(dataset="digits", backbone="cnn", width=16, psi="5", epochs=args.epochs,
                                  batch_size=50, lr=0.05, gen_lr=glr, entropy_weight=ew, seed=0,
                                  device="cpu").validate()
                train(cfg, out, show=False)
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                fracs = " ".join(f"{r['aux_sample_entropy_frac']:.3f}" for r in rows)
                print(f"{glr:>8g} {ew:>7g}  {fracs}  {100 * rows[-1]['test_acc']:.2f}%", flush=True)


if __name__ == "__main__":
    main()
