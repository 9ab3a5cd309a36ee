"""The auto fine-tuning recipe reads the data: the augmentation from a probe test on the train
images, the peak rate from a range test, more epochs while val improves, the images' own
resolution when larger; every choice is in report.json's ``recipe`` and printed, and an
option the user set always wins."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from featcache.cli import main
from featcache.heads.finetune_phases import Best, PhaseRun
from featcache.heads.finetune_plan import Plan, StepTime
from featcache.heads.finetune_recipe import EXTEND_CAP, extend
from featcache.heads.lr_range import CLAMP, pick_rate, rate_at
from featcache.heads.resolution import CAP_SIDE, Cost, choose_side, native_side
from featcache.heads.schedule import Phase

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist"


def test_pick_rate_takes_a_tenth_of_the_lowest_loss_or_the_steepest_descent():
    rates = [rate_at(i, 40, 1e-6, 1e-2) for i in range(40)]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-2)
    logs = np.log10(rates)
    # flat, a descent steepest at 1e-5, the lowest loss at 1e-4, then divergence
    losses = list(2.0 - np.tanh(3 * (logs + 5)) + np.maximum(0, logs + 4) ** 2 * 5)
    test = pick_rate(rates, losses, 1e-3)  # diverges at 7.4e-4: the default is too high
    assert test.minimum_rate == pytest.approx(rates[int(np.argmin(losses))])
    assert 5e-6 < test.steepest_rate < 2e-5
    suggested = min(test.minimum_rate / 10, test.steepest_rate)  # ~1e-5, below 1e-3 / CLAMP
    assert test.clamped and not test.reason and test.chosen == pytest.approx(1e-3 / CLAMP)
    assert suggested < test.chosen
    # the same suggestion under a default the loss never diverged at: the default is kept
    kept = pick_rate(rates, losses, 3e-5)
    assert kept.chosen == 3e-5 and "the default kept" in kept.reason and not kept.clamped
    assert "the default kept" in kept.record()["summary"]
    # a curve whose suggestion is far off: clamped to within CLAMP of the default
    falling = list(np.linspace(3, 1, 40))  # lowest at the highest rate tried
    wild = pick_rate(rates, falling, 1e-6)
    assert wild.clamped and wild.chosen == pytest.approx(1e-6 * CLAMP)


def _train_phases(best: Best, figures: list[list[float]]):
    """Trains nothing: each call is a phase whose epochs score ``figures`` in turn, kept as
    the schedule keeps them (the best val so far, with its gain)."""
    calls = []

    def train(phases: list[Phase]) -> list[PhaseRun]:
        runs = []
        for phase in phases:
            calls.append(phase)
            run = PhaseRun(phase)
            for epoch, value in enumerate(figures.pop(0)[: phase.epochs], 1):
                run.val_accuracy.append(value)
                run.val_balanced_accuracy.append(value)
                if value > float(best.score or 0) + 1e-6:
                    best.gain, best.score = value - float(best.score or 0), value
                    best.val_accuracy, best.phase, best.epoch = value, phase.name, epoch
            runs.append(run)
        return runs

    return train, calls


def _plan(phases):
    return Plan(phases, 3, {4: StepTime(0.1, 0.1)}, 0.1, 0.1, sum(p.epochs for p in phases))


def test_more_epochs_while_the_last_epoch_is_still_the_best():
    deeper = Phase("deeper", 4, 8, 1e-4)
    best = Best(0.5, [], score=0.5)
    train, calls = _train_phases(
        best, [[0.6, 0.7, 0.8, 0.85, 0.86, 0.87, 0.88, 0.9], [0.92, 0.95], [0.96, 0.97]]
    )
    runs = train([deeper])
    record = extend(train, runs, best, _plan([deeper]), epochs_asked=8, margin=0.01, deadline=None)
    # 2 more (a quarter), still improving, 2 more: at the cap (half of 8)
    assert [p.name for p in calls] == ["deeper", "extend", "extend"]
    assert calls[1].epochs == 2 and calls[1].lr == pytest.approx(0.5e-4)
    assert record["added"] == 4 == EXTEND_CAP * 8 and record["chosen"] == 12
    assert "cap" in record["summary"] and len(runs) == 3
    # the last epoch was best, but by less than the margin: no more
    best = Best(0.5, [], score=0.5)
    train, calls = _train_phases(best, [[0.6, 0.7, 0.8, 0.805]])
    runs = train([Phase("deeper", 4, 4, 1e-4)])
    record = extend(train, runs, best, _plan([deeper]), epochs_asked=4, margin=0.01, deadline=None)
    assert record["added"] == 0 and len(calls) == 1 and "stopped improving" in record["summary"]
    # still improving, but the deadline leaves no room for another epoch
    best = Best(0.5, [], score=0.5)
    train, calls = _train_phases(best, [[0.6, 0.7]])
    runs = train([Phase("deeper", 4, 2, 1e-4)])
    record = extend(train, runs, best, _plan([deeper]), epochs_asked=2, margin=0.01, deadline=0.0)
    assert record["added"] == 0 and len(calls) == 1 and "time budget" in record["summary"]
    # still improving, but the user pressed Ctrl-C: nothing more trains
    best = Best(0.5, [], score=0.5)
    train, calls = _train_phases(best, [[0.6, 0.7]])
    runs = train([Phase("deeper", 4, 2, 1e-4)])
    pressed = threading.Event()
    pressed.set()
    record = extend(train, runs, best, _plan([deeper]), epochs_asked=2, margin=0.01,
                    deadline=None, stop=pressed)  # fmt: skip
    assert record["added"] == 0 and len(calls) == 1
    assert record["summary"] == "2 + 0 (stopped by Ctrl-C)"


def _png(path: Path, size: tuple[int, int], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_own_resolution_from_the_headers_and_the_time(tmp_path):
    sizes = [(120, 90), (100, 100), (90, 140), (300, 96), (96, 96)]
    files = [_png(tmp_path / f"{i}.png", s, i) for i, s in enumerate(sizes)]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    contents = [f.read_bytes() for f in [*files, tmp_path / "bad.png"]]
    assert native_side(contents) == 96  # the median shorter side; the bad file left out
    assert native_side([b"nothing"]) is None
    # no budget: the images' own side, capped at twice the cache's
    free = choose_side(96, 32, train_seconds=10.0)
    assert free.side == 64 and free.estimated_seconds == pytest.approx(40.0)
    assert "capped at 64" in free.summary
    assert choose_side(96, 64, 10.0).side == 96
    assert choose_side(900, 224, 10.0).side == CAP_SIDE
    # a budget: the largest side whose estimate fits, or the cache's
    fits = choose_side(96, 32, train_seconds=10.0, remaining=50.0)  # half of it for training
    assert fits.side == 48 and fits.estimated_seconds == pytest.approx(22.5)
    tight = choose_side(96, 32, train_seconds=10.0, remaining=12.0)
    assert tight.side == 32 and "budget" in tight.summary
    small = choose_side(36, 32, 10.0)
    assert small.side == 32 and "not 1.25x larger" in small.summary


def test_own_resolution_counts_reading_timed_at_both_sides():
    # compute 10 s at 32 px (x4 at 64), reading 6 s at 32 and 8 s at 64: on a CPU they add
    cost = Cost(10.0, 6.0, 64, 8.0)
    assert cost.seconds(32, 32) == pytest.approx(16.0)
    assert cost.seconds(64, 32) == pytest.approx(48.0)
    assert cost.seconds(48, 32) == pytest.approx(
        22.5 + 6.0 + 2.0 * (48**2 - 32**2) / (64**2 - 32**2)
    )
    # an accelerator reads while it trains: the longer of the two
    assert Cost(10.0, 16.0, 64, 20.0, overlaps=True).seconds(32, 32) == pytest.approx(16.0)
    assert Cost(10.0, 16.0, 64, 20.0, overlaps=True).seconds(64, 32) == pytest.approx(40.0)
    # reading decides: 64 px would fit a 100 s budget on compute alone (40 <= 50), not with it
    assert choose_side(96, 32, 10.0, remaining=100.0).side == 64
    slow_read = choose_side(96, 32, Cost(10.0, 6.0, 64, 12.0), remaining=100.0)
    # 48 px: 22.5 s of compute, reading 6 s + 5/12 of the 6 s more at 64 px = 31 s <= 50 s
    assert slow_read.side == 48 and slow_read.estimated_seconds == pytest.approx(31.0)
    assert slow_read.cache_seconds == pytest.approx(16.0)


@pytest.mark.slow
def test_lr_range_test_returns_a_bounded_rate_and_restores_the_weights():
    import keras
    import tensorflow as tf

    from featcache.heads.lr_range import lr_range_test

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 16)
    images = rng.normal(0, 1, (48, 8, 8, 3)).astype("float32") + labels[:, None, None, None]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    before = [w.copy() for w in model.get_weights()]
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(48, seed=0).batch(8)

    def compile_at(rate):
        model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy")

    stepped: list[int] = []  # what drives fine-tune's bar: one call a step recorded
    test = lr_range_test(
        model, batches, compile_at, 1e-2, steps=30, on_step=lambda: stepped.append(1)
    )
    assert 3 <= len(test.rates) <= 30 and np.all(np.diff(test.rates) > 0)
    assert len(stepped) == len(test.rates)
    assert np.isfinite(test.chosen) and 1e-3 <= test.chosen <= 1e-1
    assert test.record()["by"] == "range test" and test.seconds > 0
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.pretrained
@pytest.mark.skipif(not SAMPLE.is_dir(), reason="examples/fashion-mnist is missing")
def test_augmentation_test_on_upright_turned_and_texture_images(mobilenet_weights):
    """Real MobileNet at 64 px: upright Fashion-MNIST has an orientation (no quarter turns);
    the same images each turned at random have none; stripes whose class is their
    frequency lose their class to a crop (no crop)."""
    import keras

    from featcache.heads.orientation import choose_augment

    paths = sorted(SAMPLE.glob("*/*.png"))
    classes = sorted({p.parent.name for p in paths})
    rng = np.random.default_rng(0)
    picked = rng.choice(len(paths), 96, replace=False)
    upright = np.stack(
        [
            np.asarray(Image.open(paths[i]).convert("RGB").resize((64, 64)), np.float32)
            for i in picked
        ]
    )
    labels = np.array([classes.index(paths[i].parent.name) for i in picked])
    backbone = keras.applications.MobileNet(
        weights=str(mobilenet_weights), include_top=False, input_shape=(64, 64, 3), pooling="avg"
    )

    def features_of(batch):
        return np.asarray(backbone.predict(batch / 127.5 - 1, batch_size=64, verbose=0))

    test = choose_augment(features_of, upright, labels, seed=0)
    assert not test.turns.at_chance and test.turns.accuracy > 0.5
    assert "rotate90" not in test.augment and "vflip" not in test.augment
    assert "contrast" in test.augment
    turned = np.stack([np.rot90(image, k) for image, k in zip(upright, rng.integers(0, 4, 96))])
    test = choose_augment(features_of, turned, labels, seed=0)
    assert test.turns.at_chance and {"rotate90", "vflip"} <= set(test.augment.split(","))
    assert test.record()["quarter_turns"]["bound"] > 0.25
    stripes, frequency = [], np.arange(96) % 4
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for k in frequency:
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (3 + k) * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
        grey = np.clip(127 + 100 * wave + rng.normal(0, 20, (64, 64)), 0, 255)
        stripes.append(np.repeat(grey[..., None], 3, -1).astype(np.float32))
    test = choose_augment(features_of, np.stack(stripes), frequency, seed=0)
    assert "crop" not in test.augment and not test.crop["keeps_classes"]
    assert test.turns.at_chance  # stripes at random angles have no up either


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_journey_extract_train_fine_tune_reads_the_data_and_predict(tmp_path):
    """extract (random VGG16 at 32 px) -> train-head -> fine-tune with nothing set: the
    recipe trains at the images' 48 px, measures the augmentation, range-tests the rate,
    extends while val improves, all in report.json and printed -> predict with model.keras.
    Then every option set: the recipe keeps its hands off."""
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    for k in range(3):
        for i in range(8):
            pixels = rng.integers(0, 90, (48, 48, 3))
            pixels[..., k] += 150
            (data / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(data / f"c{k}" / f"{i}.png")
    cache = tmp_path / "c.h5"
    _run("extract", data, "-o", cache, "--backbone", "vgg16", "--weights", "none",
         "--image-size", 32, "--split", "0.5,0.25,0.25", "--quiet")  # fmt: skip
    _run(
        "train-head",
        cache,
        "--head",
        "dense",
        "--hidden",
        8,
        "--epochs",
        1,
        "-o",
        tmp_path / "head",
    )
    out = tmp_path / "ft"
    text = _run("fine-tune", cache, "--head", tmp_path / "head", "-o", out, "--batch-size", 4)
    report = json.loads((out / "report.json").read_text())
    recipe = report["recipe"]
    assert set(recipe) == {"image_size", "augment", "lr", "epochs"}
    for name, choice in recipe.items():
        assert f"recipe {name}: {choice['summary']}" in text
    size = recipe["image_size"]
    assert size["native_side"] == 48 and size["chosen"] == 48 and size["cache_side"] == 32
    assert size["estimated_seconds"] > size["cache_estimated_seconds"] > 0
    assert size["read_seconds_at_cache_size"] > 0
    assert size["read_seconds_at_largest_side"]["side"] == 48
    assert size["read_seconds_at_largest_side"]["seconds"] > 0
    assert report["params"]["image_size"] == 48
    assert report["image_size"] == ([48, 48] if report["exported"] == "fine-tuned" else [32, 32])
    augment = recipe["augment"]
    assert augment["by"] == "measured" and augment["quarter_turns"]["held_out"] > 0
    assert report["params"]["augment"] == augment["chosen"]
    assert set(augment["chosen"].split(",")) <= {"flip", "vflip", "rotate90", "crop", "contrast"}
    # at 48 px the head meets features it never saw: re-fit on them before any layer thaws
    refit = report["phases"][1]
    assert refit["name"] == "head" and refit["measured_on"].startswith("frozen features")
    assert refit["epochs_run"] >= 10 and refit["class_weight"] is None  # balanced classes
    assert report["phases"][2]["layers"] > 0
    at = refit["best_epoch"]
    assert f"re-fit on frozen features: val {refit['val_accuracy'][0]:.3f} -> " in text
    assert f"epoch {at} of {refit['epochs_run']}" in text
    if report["best"]["phase"] == "head":  # the re-fit head kept: the summary says so
        assert "model.keras is the re-fit head at 48 px" in text
    lr = recipe["lr"]
    assert lr["by"] == "range test" and 1e-5 <= lr["chosen"] <= 1e-3
    assert report["params"]["lr"] == lr["chosen"]
    assert all(p["peak_lr"] in (lr["chosen"], lr["chosen"] * 10, lr["chosen"] / 2)
               for p in report["phases"][1:] if p["name"] != "head")  # fmt: skip
    epochs = recipe["epochs"]
    assert epochs["by"] == "val trend" and epochs["asked"] == 10
    assert epochs["chosen"] == 10 + epochs["added"] == report["epochs_run"]
    assert epochs["added"] <= 5
    extended = [p for p in report["phases"] if p["name"] == "extend"]
    assert sum(p["epochs_run"] for p in extended) == epochs["added"]
    # each phase's time beside the plan's estimate of it, in report.json and printed
    timed = report["phases"][1:]
    assert all(p["seconds"] > 0 and p["estimated_seconds"] > 0 for p in timed)
    for phase in timed:
        assert f"; {phase['seconds']:.0f} s (estimated {phase['estimated_seconds']:.0f} s)" in text
    assert sum(p["seconds"] for p in timed) <= report["fit_seconds"]
    plan = report["plan"]  # the time plan gave the bound of what the recipe could add
    # the estimate printed beside fit_seconds counts from the same start: the augmentation
    # test (run before train_auto), phase 0, the step timing and the range test are in both
    ran_before = augment["seconds"] + plan["head_val_seconds"] + plan["measure_seconds"]
    assert plan["before_seconds"] >= ran_before + lr["seconds"] - 0.1  # (each rounded)
    # phase 0 scored the head at the cache's 32 px; the epochs validate at 48 px: val is
    # priced there, its reading timed at 48 px and the model's share scaled by the pixels
    read, head_val = plan["val_read_seconds"], plan["head_val_seconds"]
    at_48 = read + max(0.0, head_val - read) * (48 / 32) ** 2
    assert read > 0 and plan["val_seconds"] == pytest.approx(at_48, abs=0.05)
    # a phase's estimate is its own: its epochs of its layers' steps (and a trace)
    last = plan["phases"][-1]["name"]
    for phase in timed[1:]:  # the head's re-fit aside
        step = plan["step_seconds"][last if phase["name"] == "extend" else phase["name"]]
        epoch = plan["steps_per_epoch"] * (step + plan["read_seconds"]) + plan["val_seconds"]
        assert phase["estimated_seconds"] >= phase["epochs"] * epoch - 0.05
    assert plan["extend_epochs_at_most"] == epochs["cap"] == 5
    assert plan["estimated_most_seconds"] > plan["estimated_seconds"] > 0
    assert "if val keeps improving (5 more epochs at most)" in plan["summary"]
    listing = tmp_path / "p.csv"
    _run("predict", out / "model.keras", data, "-o", listing, "--quiet")
    rows = list(csv.DictReader(open(listing)))
    assert len(rows) == 24 and {r["class"] for r in rows} <= {"c0", "c1", "c2"}
    # every option set: asked, nothing measured
    args = ["--augment", "crop", "--lr", "1e-3", "--epochs", 1, "--image-size", 32]
    text = _run("fine-tune", cache, "--head", tmp_path / "head", "-o", tmp_path / "set",
                "--batch-size", 8, *args)  # fmt: skip
    report = json.loads((tmp_path / "set" / "report.json").read_text())
    recipe = report["recipe"]
    assert {name: c["by"] for name, c in recipe.items()} == dict.fromkeys(recipe, "asked")
    assert report["plan"]["extend_epochs_at_most"] == 0  # epochs asked: nothing added
    assert recipe["lr"]["chosen"] == 1e-3 and recipe["augment"]["chosen"] == "crop"
    assert "recipe lr: 0.001 (asked)" in text


def test_own_resolution_needs_a_larger_side_in_steps():
    # 40 px is 1.25x of 32 but rounds down (steps of 16) to 32: not worth timing a step
    assert choose_side(40, 32, 10.0).side == 32
    assert "not 1.25x larger" in choose_side(40, 32, 10.0).summary
    assert choose_side(48, 32, 10.0).side == 48
