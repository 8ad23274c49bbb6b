"""``python -m unlearnctl`` (and ``accelerate launch -m unlearnctl ...``): the CLI."""

from unlearnctl.cli.app import main

if __name__ == "__main__":
    main()
