"""dtesn_trio.dtesn."""
