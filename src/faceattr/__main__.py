"""Entry point for ``python -m faceattr``."""

from faceattr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
