"""Which registered backbone a weights file was saved from, told by its kernels' shapes.

A weights file for another architecture makes Keras print a warning per layer and stop
with an error cut short. The shapes of a file's kernels (its float arrays with at least two
sides above 1: convolution and dense kernels) are the architecture's fingerprint: they do
not depend on the input size, the layers' names or the file's layout (Keras 3
``.weights.h5`` or the older ``.h5`` that ``keras.applications`` downloads).
:data:`FINGERPRINTS` holds every registered backbone's, without and with its ImageNet
classifier top; ``python -m featcache.backbones.weights_fit`` prints the table again from
the installed Keras (``tests/test_weights.py`` checks a few). Nothing here imports Keras.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

Shape = tuple[int, ...]

_TABLE = {  # all arrays, kernels only; then the same with the classifier top
    "vgg16": "0d6fe7d1e2aa3f8f f26fd0e6d2d3be71 3f9816307c0d141c 23091271f4232983",
    "vgg19": "500065d9ea397677 6b6c8ababfefa15f 9e52cbb86872f97d f59dcedc3b45f759",
    "resnet50": "c6efd6a4392957ae 74d1402565803e98 656132f4c272143d e96a3015042918ae",
    "resnet101": "8d7b17bb10ff7ffe a51320a3b3ce2aff 6b96fee18870be83 b7f7b93d5a451f8e",
    "resnet152": "489bc15e1ca4a073 567cd32bd7501cd2 a1f2e954e0dde5e0 9a9f52e58c3d9a51",
    "resnet50_v2": "638a17600e01fc4e 74d1402565803e98 f49a4243902dd850 e96a3015042918ae",
    "resnet101_v2": "395d095237e690cc a51320a3b3ce2aff 703a4f5040aaf334 b7f7b93d5a451f8e",
    "resnet152_v2": "e827d273959eda6f 567cd32bd7501cd2 3af1c3a00b4413e3 9a9f52e58c3d9a51",
    "inception_v3": "839277d45d3e55a2 f8e4e80b1ee20ef9 83ff5b12c28eb601 757958f83ccd69d2",
    "inception_resnet_v2": "3c8ef489cd0012c7 9d95965efefc8d8d 60b29a61d9eb8340 805613000ba1f8ec",
    "xception": "5f1f7e77eabaac18 e83c64aae6502093 39a65d3916947042 22b2426f93d68428",
    "mobilenet": "6bf8f03792fac946 a6f9bbc5cd70c018 431665c9d75c6499 6ff7b4d22c27a9aa",
    "mobilenet_v2": "7655aab2756c41cb a078be6decf1fb82 fef18f4dfcc3ba48 6726e41fa1d2851a",
    "mobilenet_v3_small": "aab52ed117a7edbe ba5170c050d0ca25 8b945d225ee4f6ec bd92783d4cb76249",
    "mobilenet_v3_large": "5a742186e40000b5 4642d3c5cdbfa4e4 9b360de13ba7aa9d 4506814df2767e19",
    "densenet121": "c4d5a2ca17690dd6 3edf08016fd71af1 e8ba8b5c85efaa31 f0107cc78c88d214",
    "densenet169": "e9f77c548b7be5ac 2368e882fa9776ca 4b02504b21af2058 38465c7525d665b9",
    "densenet201": "8b93a9090ef5b061 c3bd7931d497aaa6 298e4176fbdaac1f 0295561c3868960f",
    "nasnet_mobile": "af9d370acaade0da aea007c27e3d579f 602d2162e658da6d c328e5293f5521fb",
    "nasnet_large": "5efd06bdab3c889e 23c90cb3eef31569 abff3464dfc0b73f ead8ef2dd4e08e04",
    "efficientnet_b0": "6fc6ef726ca3a1d3 33739e33d337ae89 665b0ae0959edecd 0096fb4569d680ca",
    "efficientnet_b1": "a73a77caec52c1d6 2cd43795cdffde79 309c584321faf3d6 7a40c7cca311a9b2",
    "efficientnet_b2": "57743079b8557d4a 2972b9af27948ea6 3e872336844231ea 3606276afcd2436c",
    "efficientnet_b3": "d69eb601a5f4d2ba de4c8cf1b1ab5787 dbceab612a955d23 954bf4495f235709",
    "efficientnet_b4": "75f2669b68e8b12d 3b93e1b723fac463 b720765107c83bf9 664d3fa3de3ffa77",
    "efficientnet_b5": "e27a0ae55ef95364 8e0a99d65b2e8c11 98e66f93c360e5a9 1dc4ecb867d98c41",
    "efficientnet_b6": "f59b2dd9f70cccf5 d36ff3b6f5bcf9d7 390d392f42c3eb0f 597098cbc89b6b23",
    "efficientnet_b7": "0b2d44d942ba274c 9d3ff278203d7cbe 70212cf5523b5c5f ee66e7b81bb9c542",
    "efficientnet_v2_b0": "fd929bb36af22cd1 8d2e0c3b1a354dd6 99ce8f4f6cf7709b 0205c63a22a95587",
    "efficientnet_v2_b1": "520b87246b3576fb f66b4f02ec3ad9f5 157dc23d03b29091 e25991ddfafe70a4",
    "efficientnet_v2_b2": "de6a0c4b20794623 b9c5b02870740971 8cb6ad50f060007d 95062d1896679ece",
    "efficientnet_v2_b3": "cae6cf5a02f7b52b 2df59abf802e6fcd 2e73b5b1616cd5e0 d6c97265301078ee",
    "efficientnet_v2_s": "88bc960a2961956b 22796286d485fb8a 2a2e0a8e6f4d2c2c 5c429705fb0d82c0",
    "efficientnet_v2_m": "d6f59da1f747a2d1 69b47e4ade681d9a 937d27ea8f3c4c64 580f22ae0a62d8c1",
    "efficientnet_v2_l": "efc777a18b4699a8 656b76ab8f3a4df9 6fc7b896a5690d48 b05e4300814c44ac",
    "convnext_tiny": "7521f1fbcefd9fcd f1bf1cc3f998fcde 5656752878ec0771 d81d95e415787ab6",
    "convnext_small": "b08d082cc3403da5 5236ea4c5d7956c4 1896b320ca366ce1 fd02cea8d96ce0e9",
    "convnext_base": "6f7abe6e12f077f3 740c477cb977cb8d e52a3a906c069e2b 46ec317ff599af5f",
    "convnext_large": "c55ba2bb7fcb48ad 9c81365eaaeaece5 3d92d94df7bd9ccc b53d82b45a4d00c5",
    "convnext_xlarge": "5ca6c96c039559cb 89e8468ed5ebee75 855e35054e0f5226 6d0583120af9cabe",
}
FINGERPRINTS: dict[str, tuple[str, ...]] = {
    name: tuple(prints.split()) for name, prints in _TABLE.items()
}
"""Registry name -> fingerprints of every array and of the kernels only, with
``include_top=False`` and then with the ImageNet classifier top."""


def is_kernel(shape: Sequence[int]) -> bool:
    """A convolution or dense kernel: at least two sides above 1 (biases, norms and
    per-channel statistics have one)."""
    return sum(1 for side in shape if side > 1) >= 2


def fingerprint(shapes: Iterable[Sequence[int]], kernels_only: bool = False) -> str:
    """16 hex digits naming the multiset of ``shapes`` (of its kernels only: the arrays
    that every layout and Keras version stores alike)."""
    kept = sorted(
        tuple(int(side) for side in shape)
        for shape in shapes
        if not kernels_only or is_kernel(shape)
    )
    return hashlib.sha256(repr(kept).encode()).hexdigest()[:16]


def kernel_count(shapes: Iterable[Sequence[int]]) -> int:
    return sum(1 for shape in shapes if is_kernel(shape))


def _matches(shapes: Sequence[Sequence[int]], kernels_only: bool) -> list[tuple[str, bool]]:
    digest = fingerprint(shapes, kernels_only)
    column = 1 if kernels_only else 0
    found = []
    for name, prints in FINGERPRINTS.items():
        for top in (False, True):
            if prints[column + 2 * top] == digest:
                found.append((name, top))
    return found


def identify(shapes: Sequence[Sequence[int]]) -> list[tuple[str, bool]]:
    """The ``(backbone, with_top)`` pairs whose arrays ``shapes`` are: exact when every
    array matches, else those whose kernels match (ResNet V1 and V2 share theirs)."""
    return _matches(shapes, False) or _matches(shapes, True)


def misfit(shapes: Sequence[Sequence[int]], backbone: str, path: str) -> str | None:
    """``None`` when ``shapes`` (a weights file's arrays) may fit ``backbone`` without its
    top, else one line saying they do not and what the file seems to be."""
    if backbone not in FINGERPRINTS:
        return None  # an architecture this table does not know: Keras will tell
    exact = _matches(shapes, False)
    if (backbone, False) in exact:
        return None
    found = exact or _matches(shapes, True)
    if not exact and (backbone, False) in found:
        return None  # the kernels fit; other arrays differ: Keras decides
    if not found:
        seems = (
            f"its {kernel_count(shapes)} kernels match no registered backbone "
            "(saved from another architecture, or with other options?)"
        )
    elif (backbone, True) in found:
        seems = (
            f"it holds {backbone} with its ImageNet classifier top; featcache needs the "
            "file without the top (include_top=False)"
        )
    else:
        names = sorted({name for name, _ in found})
        top = " with its classifier top" if all(top for _, top in found) else ""
        which = " or ".join(names)
        seems = f"it seems to be {which}{top}: try --backbone {names[0]}"
    return f"weights file {path} does not fit {backbone}: {seems}"


def model_kernels(model: Any) -> list[Shape]:
    """The shapes of a built Keras model's floating-point weights (as a file stores them:
    seed generators' integer states are left out, as a file's integer arrays are)."""
    return [
        tuple(int(side) for side in weight.shape)
        for weight in model.weights
        if "float" in str(weight.dtype)
    ]


def _table() -> dict[str, tuple[str, ...]]:  # pragma: no cover - regenerates the data
    import keras

    from .registry import list_backbones

    table = {}
    for spec in list_backbones():
        build = spec.constructor()
        prints: list[str] = []
        for include_top in (False, True):
            shapes = model_kernels(build(include_top=include_top, weights=None))
            prints += [fingerprint(shapes), fingerprint(shapes, kernels_only=True)]
            keras.backend.clear_session()
        table[spec.name] = tuple(prints)
        print(f'    "{spec.name}": "{" ".join(prints)}",', flush=True)
    return table


if __name__ == "__main__":  # pragma: no cover
    _table()
