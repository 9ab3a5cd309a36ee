"""Zero-shot heads, text search and text towers on cached image embeddings (issue 31).

No weights can be downloaded here: tiny CLIP and SigLIP presets with random weights are
saved by ``save_to_preset`` with their tokenizers (a byte-pair vocabulary for CLIP, a
SentencePiece model trained on a few sentences for SigLIP) and image converters, and
featcache's numbers are compared with keras-hub's own forward pass of the same images and
texts.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from helpers import make_class_folder

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub not installed (featcache[hub])")

SIZE = 32
TOKENS = 24
"""Text length of the tiny presets (long enough for every prompt of the tests)."""
FAMILIES = ("clip", "siglip", "metaclip2")
PREPROCESSORS = {
    "clip": "CLIPPreprocessor",
    "siglip": "SigLIPPreprocessor",
    "metaclip2": "MetaCLIP2CausalLMPreprocessor",
}
SCALE, OFFSET = [0.02, 0.021, 0.019], [-2.0, -1.9, -1.7]
SENTENCES = [
    "a photo of a cat",
    "a photo of the small dog",
    "a red bicycle on a beach",
    "class 0 class 1 class 2",
    "itap of a bird",
    "bad art of the dog",
]


def _clip_tokenizer():
    """A byte-pair vocabulary of letters, digits, a few words; the end token has the
    largest id, as CLIP's text pooler (argmax of the ids) requires."""
    vocab: dict[str, int] = {}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789_.":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges = []
    for word in ("at</w>", "cat</w>", "ph", "pho", "photo</w>"):
        if word == "at</w>":
            merges.append("a t</w>")
        elif word == "cat</w>":
            merges.append("c at</w>")
        elif word == "ph":
            merges.append("p h")
        elif word == "pho":
            merges.append("ph o")
        else:
            vocab["to</w>"] = len(vocab)
            merges.append("t o</w>")
            vocab["photo</w>"] = len(vocab)
            merges.append("pho to</w>")
            continue
        vocab[word] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return keras_hub.models.CLIPTokenizer(vocabulary=vocab, merges=merges)


def _sentencepiece(**ids) -> bytes:
    """A SentencePiece word model of :data:`SENTENCES`, with the special ids given."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4),
        model_writer=proto,
        vocab_size=20,
        hard_vocab_limit=False,
        model_type="word",
        minloglevel=2,
        **ids,
    )
    return proto.getvalue()


def _siglip_tokenizer():
    proto = _sentencepiece(
        pad_id=0, unk_id=1, eos_id=2, bos_id=-1, pad_piece="<pad>", unk_piece="<unk>",
        eos_piece="</s>",
    )  # fmt: skip
    return keras_hub.models.SigLIPTokenizer(proto=proto)


def _metaclip2_tokenizer():
    """XLM-R's layout, which MetaCLIP 2's tokenizer shifts by one: <unk> 0, <s> 1, </s> 2."""
    proto = _sentencepiece(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    return keras_hub.models.MetaCLIP2Tokenizer(proto=proto)


def make_text_preset(family: str, folder) -> None:
    """A tiny preset of ``family`` with both towers, its tokenizer and image converter."""
    kh = keras_hub.models
    converter = keras_hub.layers.ImageConverter(image_size=(SIZE, SIZE), scale=SCALE, offset=OFFSET)
    if family == "clip":
        tokenizer = _clip_tokenizer()
        vision = kh.CLIPVisionEncoder(8, 32, 2, 2, 64, image_shape=(SIZE, SIZE, 3))
        text = kh.CLIPTextEncoder(
            tokenizer.vocabulary_size(), 16, 16, 1, 2, 32, max_sequence_length=TOKENS
        )
        backbone = kh.CLIPBackbone(vision, text, projection_dim=24)
        preprocessor = kh.CLIPPreprocessor(tokenizer, converter, sequence_length=TOKENS)
    elif family == "metaclip2":
        tokenizer = _metaclip2_tokenizer()
        vision = kh.MetaCLIP2VisionEncoder(8, 32, 2, 2, 64, image_shape=(SIZE, SIZE, 3))
        text = kh.MetaCLIP2TextEncoder(
            tokenizer.vocabulary_size(), 16, 16, 1, 2, 32, max_sequence_length=TOKENS
        )
        backbone = kh.MetaCLIP2Backbone(vision, text, projection_dim=24)
        preprocessor = kh.MetaCLIP2CausalLMPreprocessor(
            tokenizer, converter, sequence_length=TOKENS
        )
    else:
        tokenizer = _siglip_tokenizer()
        vision = kh.SigLIPVisionEncoder(8, 32, 2, 2, 64, image_shape=(SIZE, SIZE, 3))
        text = kh.SigLIPTextEncoder(
            tokenizer.vocabulary_size(), 32, 32, 1, 2, 64, max_sequence_length=TOKENS
        )
        backbone = kh.SigLIPBackbone(vision, text)
        preprocessor = kh.SigLIPPreprocessor(tokenizer, converter, sequence_length=TOKENS)
        # a trained SigLIP has a bias far from 0; make it matter in the test
        backbone.siglip_head.logit_bias.assign(-1.5)
        backbone.siglip_head.logit_scale.assign(np.log(7.0))
    if family != "siglip":  # CLIP's trained scale (100), not its initial 1/0.07: random
        head = backbone.clip_head if family == "clip" else backbone.metaclip_2_head
        head.logit_scale.assign(np.log(100.0))  # towers give close cosines; let them matter
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))  # with its tokenizer and image converter


@pytest.fixture(scope="module")
def text_presets(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(5)
    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"{family}_text")
        make_text_preset(family, folder)
        out[family] = folder
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_class_folder(tmp_path_factory.mktemp("zs") / "data", classes=3, per_class=3)


def _extract(preset, data, out, **settings):
    from featcache import extract

    settings.setdefault("projection", True)
    extract(data, backbone=str(preset), weights="preset", output=out, progress=False, **settings)
    return out


def _pixels(data, reader) -> np.ndarray:
    """The cached rows' images, decoded and resized as extraction did."""
    from featcache.extractor.decode import decode_and_resize

    s = reader.settings
    return np.stack(
        [
            decode_and_resize((data / p).read_bytes(), s.image_size, s.resize, decode=s.decode)
            for p in reader.paths
        ]
    )


def _keras_hub_logits(preset, family, pixels, texts) -> np.ndarray:
    """keras-hub's own forward pass: its preprocessor on images and texts, the backbone's
    ``vision_logits``."""
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    preprocessor = getattr(keras_hub.models, PREPROCESSORS[family]).from_preset(str(preset))
    assert preprocessor.image_converter is not None
    x = preprocessor({"images": pixels, "prompts": texts})
    x = x[0] if isinstance(x, tuple) else x
    out = backbone({"images": x["images"], "token_ids": x["token_ids"]})
    return np.asarray(out["vision_logits"])


@pytest.mark.parametrize(
    ("family", "settings"),
    [
        ("clip", {"projection": True}),
        ("clip", {"projection": False, "pooling": "cls"}),  # projected afterwards
        ("siglip", {"projection": True}),
        ("metaclip2", {"projection": True}),
    ],
)
def test_zero_shot_logits_equal_keras_hubs_forward_pass(
    text_presets, data, tmp_path, family, settings
):
    from featcache.backbones.text_tower import TextTower
    from featcache.backbones.zero_shot import build_classifier
    from featcache.store import open_cache

    cache = _extract(text_presets[family], data, tmp_path / "c.h5", **settings)
    reader = open_cache(cache)
    names = ["a photo of a cat", "the small dog", "a Red Bicycle, on a beach!"]
    tower = TextTower.load(reader.settings)
    classifier = build_classifier(tower, ["cat", "dog", "bike"], ["{}"], class_texts=names)
    ours = classifier.logits(reader.features())
    theirs = _keras_hub_logits(text_presets[family], family, _pixels(data, reader), names)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    assert np.ptp(theirs) > 1e-3  # not all equal: the test can tell texts apart


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from featcache.cli import main

    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("family", FAMILIES)
def test_journey_extract_zero_shot_predict_export(text_presets, data, tmp_path, family):
    """extract (--projection; CLIP: its class tokens, projected later) -> zero-shot ->
    predict on the images (== zero-shot on the cache) -> export (no text tower inside) ->
    the exported model gives the same -> search --text."""
    import json

    from featcache.heads.endtoend import load_model
    from featcache.heads.images import predict_images
    from featcache.heads.train import load_head
    from featcache.store import open_cache

    cache, run = tmp_path / "c.h5", tmp_path / "zs"
    projection = ["--pooling", "cls"] if family == "clip" else ["--projection"]
    _cli("extract", str(data), "-o", str(cache), "--backbone", str(text_presets[family]),
         "--weights", "preset", *projection, "--split", "0.4,0.3,0.3")  # fmt: skip
    shown = _cli("zero-shot", str(cache), "-o", str(run), "--classes", "cat,dog,bird",
                 "--templates", "clip")  # fmt: skip
    assert f"zero-shot ({family})" in shown and "7 template(s)" in shown
    report = json.loads((run / "report.json").read_text())
    assert report["labelled_images_used"] == 0 and report["all"]["rows"] == 9
    assert report["class_names"] == ["class_0", "class_1", "class_2"]
    reader = open_cache(cache)
    expected = load_head(run).predict_proba(reader.features())
    assert np.allclose(expected.sum(axis=1), 1, atol=1e-5)
    files = [str(data / p) for p in reader.paths]
    predicted = predict_images(run, files, None, top_k=3)
    for here, row in zip(predicted, expected):
        top = dict(here.top)
        ours = np.array([top[n] for n in report["class_names"]])
        np.testing.assert_allclose(ours, row, atol=1e-4)
    exported = tmp_path / "zs.keras"
    _cli("export", str(run), "-o", str(exported))
    model, names, _ = load_model(exported)
    assert names == report["class_names"]
    assert not any("text" in layer.name for layer in _all_layers(model))
    pixels = _pixels(data, reader)
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, atol=1e-4)
    _search_text(cache, reader)


def _search_text(cache, reader) -> None:
    """search --text ranks the rows by the cosine of their image embedding with the
    text's (embed_text), as keras-hub's towers give them."""
    import json

    from featcache import embed_text
    from featcache.audit.text_query import image_embeddings

    words = "a red bicycle on a beach"
    hits = json.loads(_cli("search", str(cache), "--text", words, "-k", "4", "--json"))["hits"]
    query = embed_text(words, cache)
    assert query.shape[0] == 1 and np.isclose(np.linalg.norm(query), 1, atol=1e-5)
    cosine = image_embeddings(cache) @ query[0]
    best = np.argsort(-cosine)[:4]
    assert [h["row"] for h in hits] == best.tolist()
    np.testing.assert_allclose([h["similarity"] for h in hits], cosine[best], atol=1e-4)
    assert hits[0]["path"] == reader.paths[best[0]]


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def test_caches_without_a_shared_space_are_refused_saying_why(text_presets, data, tmp_path):
    from click.testing import CliRunner

    from featcache.cli import main

    clip_mean = _extract(text_presets["clip"], data, tmp_path / "m.h5", projection=False,
                         pooling="mean")  # fmt: skip
    siglip_mean = _extract(text_presets["siglip"], data, tmp_path / "s.h5", projection=False,
                           pooling="mean")  # fmt: skip
    cnn = tmp_path / "cnn.h5"
    _cli("extract", str(data), "-o", str(cnn), "--backbone", "mobilenet_v2", "--weights", "none",
         "--image-size", "32")  # fmt: skip
    runner = CliRunner()
    expected = {
        clip_mean: "CLIP's image embedding is the projection of the last block's class token",
        siglip_mean: "SigLIP's image embedding is its attention-pooling head",
        cnn: "backbone mobilenet_v2 has no text tower",
    }
    for cache, reason in expected.items():
        for args in (["zero-shot", str(cache)], ["search", str(cache), "--text", "a cat"]):
            result = runner.invoke(main, args)
            assert result.exit_code == 2, result.output
            assert reason in result.output
    good = _extract(text_presets["clip"], data, tmp_path / "p.h5")
    for args, message in (
        (["--classes", "a,b"], "2 texts for the cache's 3 classes"),
        (["--templates", "nope"], "expected photo, plain, clip or a file"),
    ):
        result = runner.invoke(main, ["zero-shot", str(good), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    bad = tmp_path / "t.txt"
    bad.write_text("a photo\n")
    result = runner.invoke(main, ["zero-shot", str(good), "--templates", str(bad)])
    assert result.exit_code == 2 and "must hold the class name's place once" in result.output


def test_compare_learns_from_text(text_presets, data, tmp_path):
    """compare --zero-shot: the zero-shot row (0 labelled images, the run's own numbers) and
    text-probe; the penalty's limits are the zero-shot classifier and a plain probe."""
    import json

    from featcache import compare
    from featcache.heads.probe import ProbeSettings
    from featcache.heads.text_probe import fit_penalised
    from featcache.heads.zeroshot import zero_shot_classifier
    from featcache.store import open_cache

    cache = _extract(text_presets["siglip"], data, tmp_path / "c.h5", split="0.4,0.3,0.3")
    shown = _cli("compare", str(cache), "-o", str(tmp_path / "cmp"), "--protocol",
                 "linear-probe", "--zero-shot", "--shots", "1", "--seeds", "2",
                 "--c-grid", "0.1,1", "--json")  # fmt: skip
    rows = {r["protocol"]: r for r in json.loads(shown)["rows"]}
    assert set(rows) == {"linear-probe", "zero-shot", "text-probe"}
    assert rows["zero-shot"]["train_rows"] == 0 and rows["linear-probe"]["train_rows"] == 3
    assert len(json.loads(rows["text-probe"]["params"])["lambda"]) == 2  # one per draw
    reader = open_cache(cache)
    classifier = zero_shot_classifier(reader)
    test = reader.rows_of("test", labelled=True)
    accuracy = np.mean(classifier.predict(reader.features(test)) == reader.labels[test])
    assert rows["zero-shot"]["test_acc1"] == pytest.approx(accuracy, abs=1e-4)
    # the penalty's two ends
    x = classifier.image_vectors(reader.features())
    y = reader.labels
    w0 = classifier.texts.T.astype(np.float64)
    w, b = fit_penalised(x, y, w0, classifier.scale, lam=1e6)
    np.testing.assert_allclose(w, w0, atol=1e-4)
    w, b = fit_penalised(x, y, w0, classifier.scale, lam=0.0)
    assert np.mean(np.argmax(classifier.scale * x @ w + b, axis=1) == y) == 1.0
    with pytest.raises(Exception, match="protocol"):
        compare(cache, tmp_path / "q", probe=ProbeSettings(zero_shot=True))


def test_embed_text_and_text_search_rpcs_follow_the_servers_rules(text_presets, tmp_path):
    """EmbedText and Search by text answer as the Python API does, with Embed's rules:
    preset folders only under the weights root, the allow-list, and the token."""
    import shutil

    from featcache import ServeOptions, embed_text, search, start_server
    from featcache.backbones.text_tower import cached_tower
    from featcache.service.client import Client, RemoteError
    from featcache.store import open_cache

    weights = tmp_path / "weights"
    shutil.copytree(text_presets["clip"], weights / "p" / "clip")
    make_class_folder(tmp_path / "data" / "set", classes=2, per_class=3)
    (tmp_path / "cache").mkdir()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    token.chmod(0o600)
    roots = {"data_root": str(tmp_path / "data"), "cache_root": str(tmp_path / "cache")}
    options = ServeOptions(
        port=0, weights_root=str(weights), token_file=str(token),
        allow_backbone=["p/clip", "mobilenet_v2"], **roots,
    )  # fmt: skip
    srv = start_server(options, warm=False)
    texts = ["a photo of a cat", "a red bicycle on a beach", "dog"]
    try:
        with Client(f"127.0.0.1:{srv.port}", token="s3cret") as client:
            job = client.extract_dataset("set", "p/clip", output="s.h5", weights="preset",
                                         projection=True)  # fmt: skip
            assert list(job)[-1].finished
            cache = tmp_path / "cache" / "s.h5"
            vectors, scale, bias = client.embed_text(texts, "p/clip", weights="preset")
            np.testing.assert_allclose(vectors, embed_text(texts, cache), atol=1e-5)
            tower = cached_tower(open_cache(cache).settings)
            assert scale == pytest.approx(tower.scale) and bias == pytest.approx(tower.bias)
            raw, _, _ = client.embed_text(texts[:1], "p/clip", weights="preset", normalize=False)
            assert not np.isclose(np.linalg.norm(raw), 1.0)
            hits = client.search("s.h5", text=texts[1], k=3)
            local = search(cache, text=texts[1], k=3, progress=False).hits
            assert [h["row"] for h in hits] == [h["row"] for h in local]
            np.testing.assert_allclose(
                [h["similarity"] for h in hits], [h["similarity"] for h in local], atol=1e-4
            )
            refused = {
                "hub:clip_vit_base_patch32": "PERMISSION_DENIED",  # remote: never fetched
                "resnet50": "PERMISSION_DENIED",  # not on the allow-list
                "mobilenet_v2": "INVALID_ARGUMENT",  # no text tower
            }
            for name, code in refused.items():
                with pytest.raises(RemoteError) as info:
                    client.embed_text(texts, name, weights="none")
                assert info.value.code == code, (name, str(info.value))
        with Client(f"127.0.0.1:{srv.port}") as client, pytest.raises(RemoteError) as info:
            client.embed_text(texts, "p/clip", weights="preset")
        assert info.value.code == "UNAUTHENTICATED"
    finally:
        srv.stop(0)


def test_audit_gains_the_zero_shot_opinion(text_presets, data, tmp_path):
    """audit --zero-shot: every label the zero-shot classifier strongly disagrees with is in
    label_issues.csv, with its class and probability of the given label as columns."""
    import csv

    from featcache.heads.zeroshot import zero_shot_classifier
    from featcache.store import open_cache

    cache = _extract(text_presets["clip"], data, tmp_path / "c.h5")
    reader = open_cache(cache)
    p = zero_shot_classifier(reader).predict_proba(reader.features())
    given = p[np.arange(len(p)), reader.labels]
    names = reader.class_names
    ordered = np.sort(given)
    widest = int(np.argmax(np.diff(ordered)[1:-1])) + 1  # a threshold far from every row
    threshold = float((ordered[widest] + ordered[widest + 1]) / 2)
    out = tmp_path / "audit"
    _cli("audit", str(cache), "-o", str(out), "--zero-shot", "--zero-shot-threshold",
         str(threshold), "--folds", "2")  # fmt: skip
    with open(out / "label_issues.csv") as handle:
        issues = {int(r["row"]): r for r in csv.DictReader(handle)}
    disagree = (given < threshold) & (np.argmax(p, axis=1) != reader.labels)
    assert disagree.any() and not disagree.all()  # the test can tell
    for row in np.flatnonzero(disagree):
        issue = issues[int(row)]
        assert issue["flagged_by"] in ("zero-shot", "both")
        assert issue["zero_shot"] == names[int(np.argmax(p[row]))]
        assert float(issue["zero_shot_given"]) == pytest.approx(given[row], abs=1e-5)
    for row, issue in issues.items():
        assert (issue["flagged_by"] != "out-of-fold") == bool(disagree[row])
    report = (out / "report.json").read_text()
    assert '"zero_shot_disagreements": ' + str(int(disagree.sum())) in report


def test_the_confusion_image_of_a_thousand_classes_stays_small(tmp_path):
    """A zero-shot run over ImageNet's 1,000 classes drew a 60,000-pixel-wide canvas (16 GB)."""
    from PIL import Image

    from featcache.heads.report import MAX_CONFUSION_INCHES, write_confusion

    names = [f"class {i}" for i in range(1000)]
    write_confusion(np.eye(1000, dtype=int).tolist(), names, tmp_path / "c.png", "1,000 classes")
    with Image.open(tmp_path / "c.png") as image:
        assert max(image.size) <= (MAX_CONFUSION_INCHES + 1) * 100
