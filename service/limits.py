"""Request limits' defaults, light enough for the command line and the settings (no torch)."""

MAX_K = 1000  # hits per query
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")  # decoded image formats
