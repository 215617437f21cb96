"""`python -m auxgen ...`, which is also how torchrun starts it: `torchrun --nproc-per-node N -m auxgen train ...`."""

from auxgen.cli import main

if __name__ == "__main__":
    main()
