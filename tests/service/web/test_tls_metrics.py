"""HTTP beside gRPC shares the server's TLS certificate and its Prometheus metrics."""

from __future__ import annotations

import shutil
import ssl
import urllib.request

import httpx
import pytest

from tests.service.conftest import digit
from tests.service.test_server_api import self_signed
from tests.service.web.conftest import serve
from tests.service.web.test_api import key_of

pytestmark = pytest.mark.slow


def test_with_tls_the_http_api_is_https_only_with_the_same_certificate(golden, tmp_path,
                                                                       tiny_checkpoint,
                                                                       digits_dir):
    shutil.copytree(golden, tmp_path / "ws")
    cert, key = self_signed(tmp_path)
    served = serve(tmp_path / "ws", tiny_checkpoint, tls_cert=str(cert), tls_key=str(key),
                   metrics_port=0)
    try:
        assert served.server.http.url.startswith("https://")
        https = f"https://127.0.0.1:{served.server.http.port}"
        with httpx.Client(base_url=https,
                          verify=ssl.create_default_context(cafile=str(cert))) as c:
            q = digit(digits_dir, "2", 3)
            hits = c.post("/v1/search", data={"key": key_of(q), "k": "3"}).json()["hits"]
            assert hits[0]["key"] == key_of(q)
            assert c.get("/v1/nope").status_code == 404
        with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
            httpx.get(f"http://127.0.0.1:{served.server.http.port}/healthz", timeout=5)
        # requests are counted under their route and status, beside the RPCs
        port = served.server.metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'imgsim_requests_total{code="200",method="HTTP POST /v1/search"} 1.0' in text
        assert 'imgsim_requests_total{code="404",method="HTTP GET unmatched"} 1.0' in text
    finally:
        served.server.stop(0)
