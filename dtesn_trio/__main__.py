"""``python -m dtesn_trio`` is the ``dtesn-trio`` command."""

from dtesn_trio.cli import main

if __name__ == "__main__":
    main()
