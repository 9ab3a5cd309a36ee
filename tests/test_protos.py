"""The committed gRPC stubs are what ``python protos/generate.py`` makes from the .proto."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    # In a subprocess: protoc in a process that already serves gRPC can crash it.
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in ("extractor_pb2.py", "extractor_pb2.pyi", "extractor_pb2_grpc.py"):
        fresh = (tmp_path / name).read_text()
        assert (ROOT / "protos" / name).read_text() == fresh, (
            f"protos/{name} is out of date: run `python protos/generate.py`"
        )


def test_package_and_service_names():
    from featcache.protos import extractor_pb2

    service = extractor_pb2.DESCRIPTOR.services_by_name["Extractor"]
    assert service.full_name == "featcache.v1.Extractor"
    assert set(service.methods_by_name) == {
        "ListBackbones",
        "Embed",
        "EmbedStream",
        "ExtractDataset",
        "Classify",
        "Search",
        "EmbedText",
    }
