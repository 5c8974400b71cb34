"""``python -m pneumoscope`` runs the CLI (the same as the ``pneumoscope`` command)."""

from .cli import main

if __name__ == "__main__":
    main()
