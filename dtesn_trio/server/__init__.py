"""dtesn_trio.server."""
