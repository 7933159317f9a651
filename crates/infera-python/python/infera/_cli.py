"""The ``infera`` console script: the same program as the Rust binary, from the wheel."""

from __future__ import annotations

import sys


def main() -> None:
    from . import _infera

    sys.exit(_infera.cli_main(["infera", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
