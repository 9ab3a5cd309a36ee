"""Generate the Python stubs of ``protos/featcache/v1/extractor.proto``.

Run ``python protos/generate.py`` in the source tree after editing the ``.proto``;
``tests/test_protos.py`` fails while the stubs are out of date.
Needs ``grpcio-tools`` (in the ``dev`` extra, pinned so that the output is stable).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "featcache/v1/extractor.proto"
STUBS = ("extractor_pb2.py", "extractor_pb2.pyi", "extractor_pb2_grpc.py")
_ABSOLUTE = "from featcache.v1 import extractor_pb2"
_RELATIVE = "from . import extractor_pb2"


def generate(out_dir: Path = HERE) -> list[Path]:
    """Run protoc on the ``.proto`` and write the stubs into ``out_dir``."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(HERE / PROTO),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {HERE / PROTO}")
        written = []
        for name in STUBS:
            text = (Path(tmp) / "featcache" / "v1" / name).read_text()
            # The stubs live in the package featcache.protos, not featcache.v1.
            text = text.replace(_ABSOLUTE, _RELATIVE)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="Folder for the stubs.")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
