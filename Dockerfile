# imgsim service image: CPU-only torch, non-root, gRPC health check.
# Build: docker build -t imgsim .    Run: docker run -p 50051:50051 -v $PWD/var:/app/var imgsim
# A bind-mounted var/ must be writable by uid 10001 (sudo chown -R 10001 var), or run with
# --user "$(id -u):$(id -g)"; otherwise the demo stops with a message saying so (README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# CPU-only wheels of the pinned torch/torchvision first (the default wheels carry CUDA, ~5 GB).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY pyproject.toml README.md ./
COPY training ./training
COPY indexer ./indexer
COPY service ./service
COPY imgsim ./imgsim
COPY protos ./protos
RUN pip install . grpcio-tools==1.85.1 \
 && python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. \
      protos/imgsim/v1/similarity.proto protos/imgsim/v1/jobs.proto protos/imgsim/v1/catalog.proto \
 && touch imgsim/v1/__init__.py \
 && pip install --no-deps . \
 && pip install --no-deps facenet-pytorch==2.6.0

RUN useradd --create-home --uid 10001 imgsim && mkdir -p /app/var && chown imgsim /app/var
USER imgsim

# gRPC; the HTTP/JSON API and web console (--http-port, default 8080)
EXPOSE 50051 8080
# `imgsim health` (here as its light module: no torch import) reads the server's settings
# (IMGSIM_SERVE_* variables, IMGSIM_SERVE_CONFIG): set port and TLS files there, not as flags,
# and the check follows them, TLS included.
# Start period: the demo's first start (training included) took 16 s to SERVING on a 2-core
# machine at load 2 and 33-35 s at load 4-5 (benchmarks/demo_start.py); with one training job
# beside it the old demo trained 10x slower than alone, which would be ~2.5 min now.
# Failed probes in the start period do not count and the first success ends it, so a long one
# costs a healthy start nothing (a start that fails exits the container instead).
HEALTHCHECK --interval=15s --timeout=5s --start-period=240s --retries=3 \
  CMD ["python", "-m", "service.health_check", "--timeout", "4"]

# Default: the demo (trains a small model on real digits on first start, then serves).
# For your own model: docker run ... imgsim serve --checkpoint var/model.pt --host 0.0.0.0
ENTRYPOINT ["imgsim"]
CMD ["demo", "--host", "0.0.0.0", "--port", "50051"]
