"""The generated jobs_pb2 modules match protos/imgsim/v1/jobs.proto; the build compiles it."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_generated_jobs_protos_match_the_proto(tmp_path):
    from grpc_tools import protoc

    src = REPO / "protos/imgsim/v1/jobs.proto"
    assert protoc.main(["protoc", f"-I{REPO / 'protos'}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(src)]) == 0
    for name in ["jobs_pb2.py", "jobs_pb2_grpc.py"]:
        fresh = (tmp_path / "imgsim/v1" / name).read_text()
        assert (REPO / "imgsim/v1" / name).read_text() == fresh, f"{name} is stale: make proto"


def test_makefile_and_dockerfile_compile_jobs_proto():
    for f in ["Makefile", "Dockerfile"]:
        assert "protos/imgsim/v1/jobs.proto" in (REPO / f).read_text(), f
