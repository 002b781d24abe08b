"""imgsim's gRPC service: a plain-Python core and a thin gRPC adapter around it."""
