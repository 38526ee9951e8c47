"""Entry point for ``python -m effnet_cli``."""

from effnet_cli.cli.app import main

if __name__ == "__main__":
    main()
