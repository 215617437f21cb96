"""End-to-end walkthrough on the offline digits set: train MAXL (then export, train downstream
on the labels, verify). `make demo` runs this; the README quotes it.

    python examples/walkthrough.py --out runs/demo
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path


def auxgen(*args: str) -> None:
    cmd = [sys.executable, "-m", "auxgen.cli", *args]
    print("$ auxgen " + shlex.join(args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo", help="run directory (replaced if it holds a run)")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    run = Path(args.out)
    # 1. co-train the multi-task network and the label generator on digits with the small CNN
    auxgen("train", "--dataset", "digits", "--backbone", "cnn", "--psi", "5",
           "--epochs", str(args.epochs), "--batch-size", "50", "--lr", "0.05", "--gen-lr", "0.05",
           "--seed", "0", "--out", str(run), "--force")


if __name__ == "__main__":
    main()
