"""The binary's entry point: the same `trit` command that `pip install .` makes (app.cli:main)."""

from trit.app.cli import main

if __name__ == "__main__":
    main()
