"""dtesn_trio.soak."""
