"""The real server with TLS, API keys and metrics: every RPC, status codes, drain on stop, CLI."""

import datetime
import ipaddress
import json
import logging
import threading
import time
import urllib.request

import grpc
import pytest

from imgsim.v1 import similarity_pb2 as pb
from indexer.catalog import open_catalog
from service.auth import create_api_key
from service.client import SimilarityClient, UpsertImage, search_request
from service.server import ServeConfig, Server
from service.store import ensure_service_tables
from tests.service.conftest import digit, encoded, make_core

pytestmark = pytest.mark.slow


def self_signed(tmp_path):
    """A certificate for localhost/127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def secure(golden, tmp_path_factory, tiny_checkpoint):
    import shutil

    tmp = tmp_path_factory.mktemp("secure")
    shutil.copytree(golden, tmp / "ws")
    url = f"sqlite:///{tmp / 'ws' / 'cat.db'}"
    sessions = open_catalog(url)
    ensure_service_tables(sessions)
    with sessions.begin() as s:
        keys = {"write": create_api_key(s, name="w", access="write", collections=["default"])[0],
                "read": create_api_key(s, name="r", access="read", collections=["*"])[0],
                "other": create_api_key(s, name="o", access="write", collections=["other"])[0]}
    cert, key = self_signed(tmp)
    cfg = ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(tmp / "ws" / "idx"),
                      catalog_url=url, port=0, require_api_key=True, tls_cert=str(cert),
                      tls_key=str(key), metrics_port=0, max_message_bytes=512 * 1024,
                      max_items=4, watch_seconds=0)
    server = Server(cfg)
    assert server.ready.wait(120) and server.load_error is None
    target = f"localhost:{server.port}"

    def client(which=None, **kw):
        return SimilarityClient(target, tls_ca=cert, api_key=keys.get(which), **kw)

    yield server, client, keys, cert
    server.stop(0)


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_keys_decide_who_may_do_what(secure, digits_dir):
    server, client, keys, _ = secure
    img = digit(digits_dir, "3")
    with client() as anon, client("read") as reader, client("write") as writer, \
            client("other") as other:
        assert anon.health() == "SERVING"  # health needs no key (load balancers, k8s probes)
        code, msg = code_of(lambda: anon.search(img, 3))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "missing API key" in msg
        with SimilarityClient(f"localhost:{server.port}", tls_ca=secure[3],
                              api_key=keys["read"][:-3] + "xyz") as forged:
            assert code_of(lambda: forged.search(img, 3))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert len(reader.search(img, 3).hits) == 3
        code, msg = code_of(lambda: reader.delete(["3/" + img.stem]))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "read-only" in msg
        code, msg = code_of(lambda: other.search(img, 3))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'default'" in msg
        code, _ = code_of(lambda: other.upsert([UpsertImage("o/1", img)]))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        r = writer.upsert([UpsertImage("w/1", img, label="3", metadata={"by": "writer"})])
        assert r.inserted == 1


def test_tls_is_required(secure, digits_dir):
    server, _, keys, _ = secure
    with SimilarityClient(f"127.0.0.1:{server.port}", api_key=keys["read"], timeout=3) as plain:
        assert code_of(lambda: plain.search(digit(digits_dir, "1"), 1))[0] == \
            grpc.StatusCode.UNAVAILABLE


def test_every_rpc_over_the_wire(secure, digits_dir):
    _, client, _, _ = secure
    f = digit(digits_dir, "6", 2)
    with client("write") as c:
        batch = c.batch_search([search_request(f, 2), search_request(f"6/{f.stem}", 2,
                                                                     labels=["6"])])
        assert [r.hits[0].key for r in batch.results] == [f"6/{f.stem}"] * 2
        vecs = c.embed([f, f"6/{f.stem}"])
        assert vecs.shape == (2, 32) and abs(float(vecs[0] @ vecs[1]) - 1) < 1e-3
        ident = c.verify(f, identity="6")
        assert ident.same and ident.nearest_key == f"6/{f.stem}" and ident.enrolled_images == 40
        up = c.upsert([UpsertImage("wire/1", f, label="wire", metadata={"k": "v"})])
        hits = c.search(f, 3, metadata={"k": "v"}).hits
        assert [(h.key, dict(h.metadata)) for h in hits] == [("wire/1", {"k": "v"})]
        d = c.describe()
        assert (d.count, d.index_version, d.factory) == (up.count, up.index_version, "Flat")
        assert d.recall_at_10 == 1.0 and d.collections == ["default"]
        gone = c.delete(["wire/1"])
        assert gone.deleted == 1 and gone.count == up.count - 1
        r = c.reload()
        assert r.previous_version == r.index_version == gone.index_version


def test_limits_answer_with_the_right_status(secure, digits_dir):
    server, client, _, _ = secure
    from PIL import Image

    img = digit(digits_dir, "2")
    with client("write") as c:
        code, msg = code_of(lambda: c.search(b"\0" * (600 * 1024), 3))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert code_of(lambda: c.search(img, 5000))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: c.search(b"", 3)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                    "query: empty image data")
        code, msg = code_of(lambda: c.search(encoded(Image.new("RGB", (8, 8)), "ICO"), 3))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unsupported image format" in msg
        bomb = encoded(Image.new("L", (8000, 6000)), "PNG")  # 48 MP in a few KB
        code, msg = code_of(lambda: c.search(bomb, 3))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceeds" in msg
        assert code_of(lambda: c.embed([img] * 5))[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: c.search("no/such", 3))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c.delete(["no/such"]))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c.verify(img, identity="nobody"))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c.verify(img, img, identity="2"))[0] == \
            grpc.StatusCode.INVALID_ARGUMENT
        # outside the key's scope: denied before existence is revealed
        assert code_of(lambda: c.search(img, 3, collection="other"))[0] == \
            grpc.StatusCode.PERMISSION_DENIED
        with client("read") as everywhere:
            assert code_of(lambda: everywhere.search(img, 3, collection="other"))[0] == \
                grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c.reload(version="v0"))[0] == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c.search(img, 3, timeout=1e-4))[0] == \
            grpc.StatusCode.DEADLINE_EXCEEDED
        assert c.health() == "SERVING" and len(c.search(img, 1).hits) == 1  # still fine


def test_metrics_endpoint(secure, digits_dir):
    server, client, _, _ = secure
    with client("read") as c:
        c.search(digit(digits_dir, "0"), 2)
    with client() as anon:
        code_of(lambda: anon.search(digit(digits_dir, "0"), 2))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=10).read().decode()
    lines = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert float(lines['imgsim_requests_total{code="OK",method="Search"}']) >= 1
    assert float(lines['imgsim_requests_total{code="UNAUTHENTICATED",method="Search"}']) >= 1
    assert float(lines['imgsim_request_seconds_count{code="OK",method="Search"}']) >= 1
    assert float(lines['imgsim_batch_size_count{batcher="embed"}']) >= 1
    assert 'imgsim_queue_depth{batcher="search:default"}' in lines
    assert float(lines['imgsim_index_size{collection="default"}']) == \
        server.core.index.index.ntotal


def test_stop_drains_in_flight_calls(workspace, tiny_checkpoint, digits_dir):
    core = make_core(workspace, tiny_checkpoint)
    slow, entered = core.pipeline._forward, threading.Event()

    forwarded = threading.Event()

    def slow_forward(tensors):
        entered.set()
        time.sleep(1.0)
        try:
            return slow(tensors)
        finally:
            forwarded.set()

    core.pipeline.batcher.fn = slow_forward
    server = Server(ServeConfig(checkpoint=str(tiny_checkpoint), index_root=str(workspace / "idx"),
                                catalog_url=f"sqlite:///{workspace / 'cat.db'}", port=0),
                    core=core)
    out = {}
    server.stop_hooks.append(lambda: out.setdefault("hook_after_drain", forwarded.is_set()))
    with SimilarityClient(f"127.0.0.1:{server.port}") as c:
        t = threading.Thread(target=lambda: out.setdefault("r", c.search(digit(digits_dir, "5"),
                                                                         2)))
        t.start()
        assert entered.wait(20)
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 20})
        stopper.start()
        t.join(30)
        stopper.join(30)
        assert out["r"].hits[0].key == f"5/{digit(digits_dir, '5').stem}"  # finished, not cut
        assert out["hook_after_drain"] is True  # stop hooks run after the in-flight call
        assert code_of(lambda: c.search(digit(digits_dir, "5"), 2))[0] == \
            grpc.StatusCode.UNAVAILABLE


def test_client_cli_commands(secure, digits_dir, tmp_path, capsys):
    from imgsim.cli import main

    server, _, keys, cert = secure
    folder = tmp_path / "people"
    for label in ("ann", "bob"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            (folder / label / f"{i}.png").write_bytes(digit(digits_dir, "4" if label == "ann"
                                                            else "8", i).read_bytes())
    common = ["--server", f"localhost:{server.port}", "--tls-ca", str(cert)]
    w = [*common, "--api-key", keys["write"]]
    assert main(["upsert", str(folder), "--meta", "src=cli", *w]) == 0
    assert "4 inserted" in capsys.readouterr().out
    assert main(["search", str(folder / "bob" / "1.png"), "-k", "2", "--meta", "src=cli", *w]) == 0
    out = capsys.readouterr().out
    assert "bob/1" in out.splitlines()[2] and "src=cli" in out
    assert main(["verify", str(folder / "ann" / "0.png"), "--identity", "ann", *w]) == 0
    assert "SAME" in capsys.readouterr().out
    assert main(["describe", *w]) == 0
    assert "factory        Flat" in capsys.readouterr().out
    assert main(["reload", *w]) == 0
    assert "(unchanged)" in capsys.readouterr().out
    assert main(["delete", "ann/0", "ann/1", "bob/0", "bob/1", *w]) == 0
    assert "4 deleted" in capsys.readouterr().out
    assert main(["delete", "ann/0", *common, "--api-key", keys["read"]]) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main(["verify", str(folder / "ann" / "0.png"), *w]) == 2  # neither B nor --identity


def test_json_logs_carry_the_extra_fields():
    from service.logs import JsonFormatter

    rec = logging.makeLogRecord({"name": "service.x", "levelname": "INFO", "msg": "swapped %s",
                                 "args": ("v2",), "collection": "faces"})
    out = json.loads(JsonFormatter().format(rec))
    assert out["msg"] == "swapped v2" and out["collection"] == "faces" and out["level"] == "INFO"


def test_proto_fields_are_only_added():
    """Wire compatibility with the foundation's clients: original field numbers unchanged."""
    assert {f.name: f.number for f in pb.SearchRequest.DESCRIPTOR.fields if f.number <= 3} == \
        {"query": 1, "k": 2, "collection": 3}
    assert [f.name for f in pb.VerifyResponse.DESCRIPTOR.fields][:5] == \
        ["same", "distance", "similarity", "threshold", "model_version"]
    assert [f.name for f in pb.SearchHit.DESCRIPTOR.fields][:5] == \
        ["key", "label", "distance", "rank", "similarity"]
