"""Input limits, light enough for the command line and the settings (no torch)."""

# Decompression-bomb guard: refuse images above this many pixels before decoding them.
MAX_PIXELS = 40_000_000
