"""The committed gRPC stubs are what ``python protos/generate.py`` makes from the .proto."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the dev extra")
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for fresh in generate.generate(tmp_path):
        committed = ROOT / "protos" / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"protos/{fresh.name} is out of date: run `python protos/generate.py`"
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
    }
