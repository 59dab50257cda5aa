"""Allows `python -m aevlp` (and `torchrun -m aevlp`)."""
from aevlp.cli import main

if __name__ == "__main__":
    main()
