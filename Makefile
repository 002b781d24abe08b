# The two commands of the README: `make run` and `make test`. Everything else is their plumbing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run` installs the package alone; `make test` adds the dev extra (locust, playwright,
# Milvus Lite, dlib-bin, ...: hundreds of MB that the service does not need to start)
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
PROTO_SRC := protos/imgsim/v1/similarity.proto protos/imgsim/v1/jobs.proto protos/imgsim/v1/catalog.proto
PROTO_OUT := imgsim/v1/similarity_pb2.py

.PHONY: install proto run test lint clean

install: $(STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	# MTCNN's weights (MIT): the facenet-pytorch wheel without its dependencies (it pins
	# torch<2.3; nothing imports it, training/face/mtcnn.py reads its data/*.pt)
	$(PY) -m pip install --quiet --no-deps 'facenet-pytorch==2.6.0'
	touch $@

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

proto: $(PROTO_OUT)

$(PROTO_OUT): $(PROTO_SRC) $(RUN_STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)
	touch imgsim/v1/__init__.py

run: proto
	$(VENV)/bin/imgsim demo --host 127.0.0.1 --port 50051

test: proto $(STAMP)
	$(PY) -m pytest -q

lint: proto $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf imgsim/v1 var .pytest_cache
