"""One declaration per option: the checks, the gRPC conversion and the client's keywords
come from the option dataclasses' fields (featcache.core.schema)."""

from __future__ import annotations

from dataclasses import fields

import pytest

from featcache.audit.options import AuditOptions
from featcache.audit.plot_options import PlotOptions
from featcache.core.options import BackboneConfig, ExtractOptions, RayOptions
from featcache.core.schema import Range, check_value, defaults, option, options_of
from featcache.errors import InvalidOptionError
from featcache.heads.options import OPTION_SETS, HeadOptions, check_options
from featcache.service.options import ServeOptions

SETS = (
    BackboneConfig,
    ExtractOptions,
    RayOptions,
    *OPTION_SETS,
    AuditOptions,
    PlotOptions,
    ServeOptions,
)


@pytest.mark.parametrize("cls", SETS, ids=lambda c: c.__name__)
def test_every_option_is_declared_and_its_default_passes_its_own_check(cls):
    """(ServeOptions.load_classifier is a function featcache.serve passes, not an option.)"""
    declared = {each.name for each, _ in options_of(cls)}
    plain = {each.name for each in fields(cls) if each.init} - declared - {"load_classifier"}
    assert not plain, f"{cls.__name__} fields without a declaration: {sorted(plain)}"
    for each, spec in options_of(cls):
        check_value(each.name, spec, defaults(cls)[each.name])
        if spec.choices:
            with pytest.raises(InvalidOptionError) as refused:
                check_value(each.name, spec, "no-such-choice")
            assert refused.value.parameter == each.name
    cls()  # the defaults make a valid option set


def test_a_declared_range_checks_type_bounds_and_words():
    spec = option(3, range=Range(1, 64, integer=True)).metadata["featcache"]
    assert check_value("blocks", spec, 64) == 64
    for bad, words in [(0, "expected 1 to 64"), (1.5, "an integer 1 to 64"), (True, "integer")]:
        with pytest.raises(InvalidOptionError, match=words):
            check_value("blocks", spec, bad)


def test_options_shared_by_heads_sets_are_checked_alike():
    specs: dict[str, list] = {}
    for cls in OPTION_SETS:
        for each, spec in options_of(cls):
            specs.setdefault(each.name, []).append(spec)
    for name, found in specs.items():
        assert len({(s.range, s.choices, s.parse) for s in found}) == 1 or name in {
            "lr",  # fine_tune's may be None (the schedule's default) but is checked the same
            "epochs",
            "patience",
            "image_size",
            "augment",
            "optimizer",
            "batch_size",
            "test_views",  # fine_tune's adds auto (from its augmentation and val); export's not
        }, name
    with pytest.raises(InvalidOptionError, match=r"^dropout 1\.5: must be at least 0 and below 1"):
        HeadOptions(dropout=1.5)
    with pytest.raises(InvalidOptionError, match=r"^top_k 0"):
        check_options({"top_k": 0})
    check_options({"not_an_option": object()})  # other names pass


def test_backbone_options_round_trip_through_the_wire_by_their_declarations():
    from featcache.service.convert import config_from_message, settings_message

    config = BackboneConfig(
        "mobilenet",
        "none",
        (48, 64),
        pooling="max",
        layer="conv_pw_5",
        preprocessing="none",
        seed=7,
        resize="pad",
        precision="bfloat16",
        blocks=2,
        projection=True,
    )
    message = settings_message(config)
    assert message.name == "mobilenet" and list(message.image_size) == [48, 64]
    back = config_from_message(message, weights_root=None)
    assert back == config
    assert config_from_message(settings_message(BackboneConfig()), None) == BackboneConfig(layer="")


def test_a_request_leaves_unset_options_at_their_declared_defaults():
    from featcache.protos import extractor_pb2 as pb
    from featcache.service.convert import extract_options

    request = pb.ExtractDatasetRequest(data="d", batch_size=8, views=0)
    options = extract_options(request, BackboneConfig(), None, max_pixels=1000)
    expected = ExtractOptions(batch_size=8, max_pixels=1000, progress=False)
    assert options == expected
    assert options.views is None and options.augment_seed is None  # "as the cache"
    seeded = pb.ExtractDatasetRequest(data="d", views=3, augment_seed=0)
    chosen = extract_options(seeded, BackboneConfig(), None, max_pixels=1000)
    assert (chosen.views, chosen.augment_seed) == (3, 0)  # 0 is a seed, not "unset"


def test_client_keywords_are_the_declared_options():
    from featcache.service.client import _DATASET_OPTIONS, _settings

    message = _settings("vgg16", image_size=32, projection=True, blocks=2)
    assert (message.name, list(message.image_size), message.projection) == ("vgg16", [32, 32], True)
    with pytest.raises(TypeError, match="'poolin'"):
        _settings("vgg16", poolin="avg")
    assert {"batch_size", "dtype", "split", "views", "augment_seed"} <= set(_DATASET_OPTIONS)
    assert "max_pixels" not in _DATASET_OPTIONS and "backbone" not in _DATASET_OPTIONS


# -- the CLI: flags derived from the declarations ------------------------------------------

COMMANDS = {
    "extract": ("ExtractOptions", "RayOptions"),
    "train-head": ("HeadOptions",),
    "zero-shot": ("ZeroShotOptions",),
    "fine-tune": ("FineTuneOptions",),
    "compare": ("CompareOptions",),
    "predict": (),
    "audit": ("AuditOptions",),
    "plot": ("PlotOptions",),
    "serve": ("ServeOptions",),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_declared_option_is_a_flag_of_its_command(command):
    from featcache.cli import main
    from featcache.commands._options import flag_of

    by_name = {cls.__name__: cls for cls in SETS}
    offered = {opt for p in main.commands[command].params for opt in p.opts}
    for name in COMMANDS[command]:
        for each, spec in options_of(by_name[name]):
            if spec.cli:
                assert flag_of(each.name, spec) in offered, (command, each.name)
                if spec.short:
                    assert spec.short in offered


def test_a_new_declaration_is_a_checked_flag_with_its_help():
    """What adding an option takes: the field; the flag, its help and the check follow."""
    from dataclasses import dataclass

    import click
    from click.testing import CliRunner

    from featcache.commands._options import flags
    from featcache.commands._shared import handle_errors
    from featcache.core.schema import check_fields

    @dataclass(frozen=True)
    class Demo:
        tile_size: int = option(3, range=Range(1, 5), help="Tiles per side.")
        mode: str = option("a", choices=("a", "b"))
        sharpen: bool = option(False, negatable=True, help="Sharpen first.")

        def __post_init__(self) -> None:
            check_fields(self)

    @click.command()
    @flags(Demo)
    @handle_errors
    def demo(**given):
        click.echo(repr(Demo(**given)))

    runner = CliRunner()
    assert "Tiles per side.  [default: 3]" in runner.invoke(demo, ["--help"]).output
    ran = runner.invoke(demo, ["--tile-size", "4", "--mode", "b", "--sharpen"])
    assert ran.exit_code == 0 and "Demo(tile_size=4, mode='b', sharpen=True)" in ran.output
    refused = runner.invoke(demo, ["--tile-size", "9"])
    assert refused.exit_code == 2
    assert refused.output.strip() == "error: --tile-size 9: expected 1 to 5"


def test_cli_journey_declared_flags_from_extract_to_predict(class_folder, tmp_path):
    """extract -> train-head (dense flags) -> a refused flag value leaves the run alone ->
    compare (probe flags) -> predict, each flag from its declaration."""
    import json

    from click.testing import CliRunner

    from featcache.cli import main

    runner = CliRunner()
    cache = tmp_path / "c.h5"
    tiny = ["-b", "vgg16", "-w", "none", "--image-size", "32", "--no-projection", "-q"]
    assert (
        runner.invoke(main, ["extract", str(class_folder), "-o", str(cache), *tiny]).exit_code == 0
    )
    run = tmp_path / "run"
    head = ["--hidden", "16", "--dropout", "0.2", "--epochs", "3", "--batch-size", "4"]
    trained = runner.invoke(main, ["train-head", str(cache), "-o", str(run), *head, "--json"])
    assert trained.exit_code == 0, trained.output
    params = json.loads(trained.output)["params"]
    assert (params["hidden"], params["dropout"], params["epochs"]) == ([16], 0.2, 3)
    bad = runner.invoke(
        main, ["train-head", str(cache), "-o", str(tmp_path / "r2"), "--dropout", "1.5"]
    )
    assert bad.exit_code == 2
    assert bad.output.strip() == "error: --dropout 1.5: must be at least 0 and below 1"
    assert not (tmp_path / "r2").exists()
    board = runner.invoke(
        main,
        ["compare", str(cache), "-o", str(tmp_path / "cmp"), "--protocol", "knn", "--knn-ks", "1,3",
         "--bootstrap", "0", "--json"],
    )  # fmt: skip
    assert board.exit_code == 0, board.output
    out = tmp_path / "p.csv"
    predicted = runner.invoke(
        main, ["predict", str(run), str(cache), "-o", str(out), "--top-k", "2"]
    )
    assert predicted.exit_code == 0, predicted.output
    assert out.is_file() and len(out.read_text().splitlines()) == 13
