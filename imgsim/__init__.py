"""imgsim: the command line and the generated protobuf modules (imgsim.v1, built by `make proto`)."""
