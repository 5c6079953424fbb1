"""``make demo``: the command line's default run, written to ``--out`` (default ``demo-out``).

It explains scikit-image's sample photos with the pretrained EfficientNet-Lite0
and prints where the report is.  The output directory is replaced when it holds
a previous report (never when it holds anything else).
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    """Run ``salience explain --out DIR --overwrite`` plus any extra arguments."""
    from .cli import app

    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args and "-o" not in args:
        args += ["--out", "demo-out"]
    app(["explain", "--overwrite", *args], prog_name="salience")


if __name__ == "__main__":
    main()
