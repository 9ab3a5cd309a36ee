"""fine-tune's balancing, its no-silent-trade selection and its time plan: the arithmetic here
(NumPy, no model), real runs in test_finetune_report.py and test_finetune.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from featcache.errors import InvalidOptionError
from featcache.heads.finetune import balanced_draw
from featcache.heads.finetune_phases import Best, class_weights, resolve_balance, trade
from featcache.heads.finetune_plan import Plan, StepTime, duration, fit_to_budget
from featcache.heads.options import FineTuneOptions, parse_duration
from featcache.heads.schedule import plan_phases


def test_time_budget_reads_seconds_minutes_hours_and_refuses_the_rest():
    assert [parse_duration(v) for v in ("300", "90s", "5m", "1.5h", 12)] == [
        300.0, 90.0, 300.0, 5400.0, 12.0,
    ]  # fmt: skip
    assert FineTuneOptions(time_budget="2m").time_budget == 120.0
    for bad in ("soon", "0", "-5m", "5d", "inf"):
        with pytest.raises(InvalidOptionError, match=r"^time_budget"):
            FineTuneOptions(time_budget=bad)
    with pytest.raises(InvalidOptionError, match=r"^time_budget.*only with schedule auto"):
        FineTuneOptions(schedule="fixed", time_budget="5m")
    with pytest.raises(InvalidOptionError, match=r"^allow_trade.*only with schedule auto"):
        FineTuneOptions(schedule="fixed", allow_trade=True)
    assert [duration(s) for s in (4.2, 200, 3900)] == ["4 s", "3 min 20 s", "1 h 05 min"]


def test_balance_auto_samples_only_imbalanced_train_sets():
    skewed = np.array([0] * 58 + [1] * 11 + [2] * 4 + [3] * 27)
    even = np.array([0, 1, 2] * 10)
    assert resolve_balance(skewed, 4, "auto") == "sample"
    assert resolve_balance(even, 3, "auto") == "none"
    assert resolve_balance(even, 3, "weights") == "weights"
    assert resolve_balance(skewed, 4, "none") == "none"
    assert class_weights(skewed, 4, "sample") is None
    weights = class_weights(skewed, 4, "weights")
    assert weights is not None and weights[2] == pytest.approx(100 / (4 * 4))
    chance = balanced_draw(np.append(skewed, -1))  # a row of a class the head never saw
    assert chance[-1] == 0 and chance.sum() == pytest.approx(1)
    per_class = [chance[:-1][skewed == c].sum() for c in range(4)]
    np.testing.assert_allclose(per_class, 0.25)


def test_an_epoch_below_the_head_on_either_figure_is_never_kept_unless_allowed():
    strict = Best(0.70, [], score=0.40, val_balanced_accuracy=0.40, floor=(0.70, 0.40))
    assert strict.eligible(0.70, 0.55) and strict.eligible(0.75, 0.40)
    assert not strict.eligible(0.54, 0.65)  # the trade: accuracy for balance
    assert not strict.eligible(0.80, 0.39)
    assert Best(0.70, [], floor=None).eligible(0.1, 0.1)
    traded = Best(0.54, [], score=0.65, val_balanced_accuracy=0.65)
    assert trade(traded, 0.70, 0.40) == {"val_accuracy": -0.16, "val_balanced_accuracy": 0.25}
    assert trade(Best(0.75, [], val_balanced_accuracy=0.5), 0.70, 0.40) is None


def test_the_head_is_replaced_only_by_more_than_one_val_images_worth():
    # val of 30 images: one picture more is 0.0333; the head's 0.70 needs more than 0.7333
    head = Best(0.70, [], margin=1 / 30)
    assert not head.beats(0.70 + 1 / 30) and head.beats(0.70 + 2 / 30)
    tuned = Best(0.75, [], phase="top", epoch=2, margin=1 / 30)
    assert tuned.beats(0.75 + 1 / 30)  # among fine-tuned epochs the better one wins
    assert not tuned.beats(0.75)  # a tie keeps the earlier
    assert Best(0.70, []).beats(0.70 + 1e-3)  # no margin asked: any gain


def _plan(epochs, steps=10):
    timing = {0: StepTime(1.0, 0.1), 3: StepTime(2.0, 0.5), 13: StepTime(3.0, 1.0)}
    phases = plan_phases(epochs, 1e-4, 13, head_epochs=1)
    return Plan(phases, steps, timing, val_seconds=2.0, evaluate_seconds=4.0, epochs_asked=epochs)


def test_the_estimate_adds_each_phase_and_the_budget_cuts_epochs_to_fit():
    plan = _plan(10)
    assert [(p.name, p.units, p.epochs) for p in plan.phases] == [
        ("head", 0, 1), ("top", 3, 3), ("deeper", 13, 6),
    ]  # fmt: skip
    # head 1 + 1*(10*0.1 + 2); top 2 + 3*(10*0.5 + 2); deeper 3 + 6*(10*1 + 2); eval 4
    assert plan.seconds == pytest.approx(4 + 23 + 75 + 4)
    assert "about 1 min 46 s" in plan.summary() and "up to" not in plan.summary()
    assert plan.most_seconds == plan.seconds
    plan.extend_epochs = 5  # the recipe may add 5 epochs of deeper: 3 + 5*(10*1 + 2)
    assert plan.most_seconds == pytest.approx(plan.seconds + 63)
    assert plan.summary().endswith(
        "val 2.0 s an epoch); up to 2 min 49 s if val keeps improving (5 more epochs at most)"
    )
    assert plan.record()["estimated_most_seconds"] == pytest.approx(169.0)
    # reading a batch (0.3 s) adds to each step on a CPU; overlapped, a step takes the longer
    read = {units: replace(cost, read_seconds=0.3) for units, cost in plan.timing.items()}
    plan.timing, plan.extend_epochs = read, 0  # 10 epochs of 10 steps: 30 s more
    assert plan.seconds == pytest.approx(106 + 30) and "reading a batch 0.30 s" in plan.summary()
    plan.read_overlaps = True  # head 0.1 -> 0.3 s a step (1 epoch, 10 steps): 2 s more
    assert plan.seconds == pytest.approx(106 + 2) and plan.record()["read_overlaps"]
    fitted = fit_to_budget(_plan(10), 60.0, 1e-4, 13, 1)
    assert fitted.seconds <= 60 and sum(p.epochs for p in fitted.phases) < 10
    more = fit_to_budget(_plan(10), fitted.seconds + 100, 1e-4, 13, 1)
    assert sum(p.epochs for p in more.phases) > sum(p.epochs for p in fitted.phases)
    assert "epochs asked fit" in fitted.notes[0]
    assert fit_to_budget(_plan(10), 1000.0, 1e-4, 13, 1).notes == []  # all fit: no note
    nothing = fit_to_budget(_plan(10), 5.0, 1e-4, 13, 1)
    assert nothing.phases == [] and "not even one epoch" in nothing.notes[0]
    assert nothing.record()["epochs_planned"] == 0


def test_a_stop_request_ends_fit_at_an_epoch_end_only_when_epochs_remain():
    import threading

    import keras

    from featcache.heads.finetune_plan import stop_callback

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32)
    assert stop_callback(None, []) == []
    pressed, notes = threading.Event(), []
    pressed.set()
    ran = model.fit(x, y, epochs=3, verbose=0, callbacks=stop_callback(pressed, notes))
    assert len(ran.history["loss"]) == 1
    assert notes == ["Ctrl-C: stopped after epoch 1 of this phase"]
    notes.clear()  # the last epoch: nothing is cut, nothing noted
    model.fit(x, y, epochs=1, verbose=0, callbacks=stop_callback(pressed, notes))
    assert notes == []
    notes.clear()  # not pressed: every epoch runs
    ran = model.fit(x, y, epochs=2, verbose=0, callbacks=stop_callback(threading.Event(), notes))
    assert len(ran.history["loss"]) == 2 and notes == []


def test_compiled_for_training_the_train_step_is_traced_once():
    """Every fine-tune phase, its step timing and the range test compile anew: with the
    optimizer built at compile, the train step is traced once, the same update as Keras's."""
    import keras

    from featcache.heads.compiling import compile_for_training
    from featcache.heads.schedule import layerwise_optimizer

    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    y = np.array([0, 1] * 4)
    weights, traces = [], []
    for compiler in ("keras", "ours"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        real_step = model.train_step

        def counted(data, real_step=real_step, compiler=compiler):
            traces.append(compiler)
            return real_step(data)

        model.train_step = counted
        scales = {id(model.layers[0].kernel): 0.25}  # the layer-wise rates, keyed at build
        args = {
            "optimizer": layerwise_optimizer("adam", 0.1, scales),
            "loss": "sparse_categorical_crossentropy",
        }
        if compiler == "ours":
            compile_for_training(model, **args)
            assert model.optimizer.built
        else:
            model.compile(**args)
        for _ in range(3):
            model.train_on_batch(x, y)
        weights.append(model.get_weights())
    assert traces.count("ours") == 1 <= traces.count("keras")
    for ours, theirs in zip(*weights):
        np.testing.assert_array_equal(ours, theirs)
    # a model whose variables do not exist yet is left to Keras
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    compile_for_training(unbuilt, optimizer="adam", loss="sparse_categorical_crossentropy")
    assert not unbuilt.optimizer.built
    unbuilt.train_on_batch(x, y)
    assert unbuilt.optimizer.built
