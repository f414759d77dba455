"""`python -m evaluation --pred PRED_DIR --gt GT_DIR --out OUT_DIR`."""
import sys

from evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
