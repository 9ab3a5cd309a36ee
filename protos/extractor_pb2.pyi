from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BackboneSettings(_message.Message):
    __slots__ = ("name", "weights", "image_size", "pooling", "layer", "resize", "preprocessing", "seed", "precision", "blocks", "projection", "decode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    weights: str
    image_size: _containers.RepeatedScalarFieldContainer[int]
    pooling: str
    layer: str
    resize: str
    preprocessing: str
    seed: int
    precision: str
    blocks: int
    projection: bool
    decode: str
    def __init__(self, name: _Optional[str] = ..., weights: _Optional[str] = ..., image_size: _Optional[_Iterable[int]] = ..., pooling: _Optional[str] = ..., layer: _Optional[str] = ..., resize: _Optional[str] = ..., preprocessing: _Optional[str] = ..., seed: _Optional[int] = ..., precision: _Optional[str] = ..., blocks: _Optional[int] = ..., projection: _Optional[bool] = ..., decode: _Optional[str] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("data", "shape", "dtype")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "pixels")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pixels: Tensor
    def __init__(self, encoded: _Optional[bytes] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("backbone", "images", "max_pixels")
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    backbone: BackboneSettings
    images: _containers.RepeatedCompositeFieldContainer[Image]
    max_pixels: int
    def __init__(self, backbone: _Optional[_Union[BackboneSettings, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., max_pixels: _Optional[int] = ...) -> None: ...

class BackboneInfo(_message.Message):
    __slots__ = ("name", "backbone_sha256", "weights", "weights_sha256", "image_height", "image_width", "pooling", "layer", "preprocessing", "resize", "feature_dim", "seed", "precision", "blocks", "projection", "decode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_SHA256_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PROJECTION_FIELD_NUMBER: _ClassVar[int]
    DECODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    backbone_sha256: str
    weights: str
    weights_sha256: str
    image_height: int
    image_width: int
    pooling: str
    layer: str
    preprocessing: str
    resize: str
    feature_dim: int
    seed: int
    precision: str
    blocks: int
    projection: bool
    decode: str
    def __init__(self, name: _Optional[str] = ..., backbone_sha256: _Optional[str] = ..., weights: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ..., pooling: _Optional[str] = ..., layer: _Optional[str] = ..., preprocessing: _Optional[str] = ..., resize: _Optional[str] = ..., feature_dim: _Optional[int] = ..., seed: _Optional[int] = ..., precision: _Optional[str] = ..., blocks: _Optional[int] = ..., projection: _Optional[bool] = ..., decode: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values", "error")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    error: str
    def __init__(self, values: _Optional[_Iterable[float]] = ..., error: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("backbone", "embeddings")
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    backbone: BackboneInfo
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    def __init__(self, backbone: _Optional[_Union[BackboneInfo, _Mapping]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ...) -> None: ...

class ListBackbonesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Backbone(_message.Message):
    __slots__ = ("name", "default_size", "feature_dim", "loaded", "family", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    default_size: int
    feature_dim: int
    loaded: bool
    family: str
    source: str
    def __init__(self, name: _Optional[str] = ..., default_size: _Optional[int] = ..., feature_dim: _Optional[int] = ..., loaded: _Optional[bool] = ..., family: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListBackbonesResponse(_message.Message):
    __slots__ = ("backbones", "loaded", "classifiers")
    BACKBONES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIERS_FIELD_NUMBER: _ClassVar[int]
    backbones: _containers.RepeatedCompositeFieldContainer[Backbone]
    loaded: _containers.RepeatedCompositeFieldContainer[BackboneInfo]
    classifiers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, backbones: _Optional[_Iterable[_Union[Backbone, _Mapping]]] = ..., loaded: _Optional[_Iterable[_Union[BackboneInfo, _Mapping]]] = ..., classifiers: _Optional[_Iterable[str]] = ...) -> None: ...

class ExtractDatasetRequest(_message.Message):
    __slots__ = ("data", "output", "backbone", "dtype", "split", "labels", "batch_size", "overwrite", "max_pixels", "checkpoint_seconds", "views", "augment", "augment_seed", "taps")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_SEED_FIELD_NUMBER: _ClassVar[int]
    TAPS_FIELD_NUMBER: _ClassVar[int]
    data: str
    output: str
    backbone: BackboneSettings
    dtype: str
    split: str
    labels: str
    batch_size: int
    overwrite: bool
    max_pixels: int
    checkpoint_seconds: float
    views: int
    augment: str
    augment_seed: int
    taps: str
    def __init__(self, data: _Optional[str] = ..., output: _Optional[str] = ..., backbone: _Optional[_Union[BackboneSettings, _Mapping]] = ..., dtype: _Optional[str] = ..., split: _Optional[str] = ..., labels: _Optional[str] = ..., batch_size: _Optional[int] = ..., overwrite: _Optional[bool] = ..., max_pixels: _Optional[int] = ..., checkpoint_seconds: _Optional[float] = ..., views: _Optional[int] = ..., augment: _Optional[str] = ..., augment_seed: _Optional[int] = ..., taps: _Optional[str] = ...) -> None: ...

class BadFile(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ExtractProgress(_message.Message):
    __slots__ = ("done", "total", "embedded", "reused", "bad", "images_per_second", "seconds", "finished", "output", "rows", "feature_dim", "removed", "bad_files")
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    BAD_FIELD_NUMBER: _ClassVar[int]
    IMAGES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_DIM_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    BAD_FILES_FIELD_NUMBER: _ClassVar[int]
    done: int
    total: int
    embedded: int
    reused: int
    bad: int
    images_per_second: float
    seconds: float
    finished: bool
    output: str
    rows: int
    feature_dim: int
    removed: int
    bad_files: _containers.RepeatedCompositeFieldContainer[BadFile]
    def __init__(self, done: _Optional[int] = ..., total: _Optional[int] = ..., embedded: _Optional[int] = ..., reused: _Optional[int] = ..., bad: _Optional[int] = ..., images_per_second: _Optional[float] = ..., seconds: _Optional[float] = ..., finished: _Optional[bool] = ..., output: _Optional[str] = ..., rows: _Optional[int] = ..., feature_dim: _Optional[int] = ..., removed: _Optional[int] = ..., bad_files: _Optional[_Iterable[_Union[BadFile, _Mapping]]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images", "top_k", "max_pixels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    top_k: int
    max_pixels: int
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., top_k: _Optional[int] = ..., max_pixels: _Optional[int] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("name", "probability")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    probability: float
    def __init__(self, name: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("top", "probabilities", "error")
    TOP_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[ClassScore]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    error: str
    def __init__(self, top: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ..., probabilities: _Optional[_Iterable[float]] = ..., error: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("class_names", "results")
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, class_names: _Optional[_Iterable[str]] = ..., results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("cache", "row", "image", "text", "k", "exact", "tap")
    CACHE_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    cache: str
    row: int
    image: Image
    text: str
    k: int
    exact: bool
    tap: str
    def __init__(self, cache: _Optional[str] = ..., row: _Optional[int] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., text: _Optional[str] = ..., k: _Optional[int] = ..., exact: _Optional[bool] = ..., tap: _Optional[str] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("rank", "row", "path", "class_name", "split", "similarity")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    rank: int
    row: int
    path: str
    class_name: str
    split: str
    similarity: float
    def __init__(self, rank: _Optional[int] = ..., row: _Optional[int] = ..., path: _Optional[str] = ..., class_name: _Optional[str] = ..., split: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("query", "hits", "index", "tap")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    query: str
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    index: str
    tap: str
    def __init__(self, query: _Optional[str] = ..., hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., index: _Optional[str] = ..., tap: _Optional[str] = ...) -> None: ...

class EmbedTextRequest(_message.Message):
    __slots__ = ("backbone", "texts", "normalize")
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    backbone: BackboneSettings
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    def __init__(self, backbone: _Optional[_Union[BackboneSettings, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ...) -> None: ...

class EmbedTextResponse(_message.Message):
    __slots__ = ("backbone", "embeddings", "logit_scale", "logit_bias")
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LOGIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    backbone: BackboneInfo
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    logit_scale: float
    logit_bias: float
    def __init__(self, backbone: _Optional[_Union[BackboneInfo, _Mapping]] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., logit_scale: _Optional[float] = ..., logit_bias: _Optional[float] = ...) -> None: ...
