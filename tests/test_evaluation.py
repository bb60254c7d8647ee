"""Evaluation arithmetic on small hand-built, asymmetric cases: every figure a page
shows is checked against a value worked out by hand (and scikit-learn's own)."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from cifar_core import evaluation
from cifar_core.evaluation import compute_metrics, cross_entropy, flip_tta, inference_batch_size, mirror, top_k

NAMES = ("cat", "dog", "ship", "frog")
# 7 images, 4 classes, 4 right; "frog" is never true and never predicted.
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 2, 1, 1, 1, 2])
CONFIDENCE = np.array([0.7, 0.4, 0.9, 0.6, 0.8, 0.5, 0.55])


def _probs(predicted, confidence, num_classes=4):
    probs = np.tile(((1 - confidence) / (num_classes - 1))[:, None], (1, num_classes))
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs.astype(np.float32)


PROBS = _probs(Y_PRED, CONFIDENCE)


def test_confusion_matrix_rows_are_true_classes():
    metrics = compute_metrics(list(Y_TRUE), PROBS, NAMES)  # labels as a list, as JSON gives them
    assert metrics["confusion_matrix"] == [[1, 1, 1, 0],
                                           [0, 2, 0, 0],
                                           [0, 1, 1, 0],
                                           [0, 0, 0, 0]]
    assert metrics["test_accuracy"] == pytest.approx(4 / 7)
    assert metrics["n_test"] == 7 and metrics["class_names"] == list(NAMES)


def test_confusion_matrix_matches_scikit_learn_on_random_labels():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(3)
    truth, guessed = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    guessed[guessed == 9] = 8  # a class never predicted keeps its empty column
    np.testing.assert_array_equal(evaluation.confusion_matrix(truth, guessed, 10),
                                  confusion_matrix(truth, guessed, labels=np.arange(10)))


def test_per_class_precision_recall_f1_and_support():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class never predicted scores 0, silently
        report = compute_metrics(Y_TRUE.astype(np.int16), PROBS, NAMES)["per_class"]
    # precision = TP / predicted, recall = TP / true, F1 = 2PR / (P + R)
    assert report["cat"] == pytest.approx({"precision": 1.0, "recall": 1 / 3, "f1": 0.5, "support": 3})
    assert report["dog"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert report["ship"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["frog"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert list(report) == list(NAMES) and type(report["cat"]["support"]) is int


def test_cross_entropy_is_the_mean_negative_log_probability_of_the_truth():
    picked = PROBS[np.arange(7), Y_TRUE]
    expected = -np.mean(np.log(picked))
    assert cross_entropy(Y_TRUE, PROBS) == pytest.approx(expected, rel=1e-6)
    assert cross_entropy(Y_TRUE, PROBS) == pytest.approx(log_loss(Y_TRUE, PROBS, labels=range(4)), rel=1e-5)
    # A zero probability is clipped, not infinite.
    certain_wrong = np.array([[0.0, 1.0, 0.0, 0.0]])
    assert cross_entropy(np.array([0]), certain_wrong) == pytest.approx(-np.log(evaluation.EPSILON))
    assert compute_metrics(Y_TRUE, PROBS, NAMES)["test_loss"] == pytest.approx(expected, rel=1e-6)


def _left_heavy(n=2, size=4):
    images = np.zeros((n, size, size, 3), np.uint8)
    images[:, :, : size // 2, :] = 255  # left half white, right half black
    return images


def _orientation_model(images):
    """'cat' for bright-left images, 'dog' for bright-right, never 'ship' or 'frog'."""
    half = images.shape[2] // 2
    left = images[:, :, :half].mean(axis=(1, 2, 3)) / 255
    right = images[:, :, half:].mean(axis=(1, 2, 3)) / 255
    total = left + right
    return np.stack([left / total, right / total, 0 * left, 0 * left], axis=1).astype(np.float32)


def test_mirror_flips_left_and_right_only():
    images = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)
    flipped = mirror(images)
    assert flipped.shape == images.shape
    np.testing.assert_array_equal(flipped[:, :, 0], images[:, :, 3])
    np.testing.assert_array_equal(flipped[:, 0, :], images[:, 0, ::-1])


def test_flip_tta_averages_the_image_and_its_mirror():
    calls = []

    def predict(images):
        calls.append(images.copy())
        return _orientation_model(images)

    plain, averaged = flip_tta(predict, _left_heavy())
    np.testing.assert_allclose(plain, [[1, 0, 0, 0]] * 2)
    np.testing.assert_allclose(averaged, [[0.5, 0.5, 0, 0]] * 2)
    assert len(calls) == 2 and np.array_equal(calls[1], mirror(calls[0]))


def test_the_tta_accuracy_is_measured_on_the_averaged_probabilities(monkeypatch):
    # Two cats: the first bright on the left (seen as 'cat'), the second bright on the right
    # (seen as 'dog'). Averaged with its mirror, any image scores 0.5/0.5 here: argmax 'cat'.
    images = _left_heavy(2)
    images[1] = mirror(images[1:2])[0]
    images[1, :, 0] = 200
    model, callbacks, seen = object(), [object()], []

    def predictor(*args):
        seen.append(args)
        return _orientation_model

    monkeypatch.setattr(evaluation, "model_predictor", predictor)
    metrics, probs, probs_tta = evaluation.measure_on_test(model, images, np.array([0, 0]), NAMES, 128, tta=True,
                                                           callbacks=callbacks)
    assert seen == [(model, 64, 128, callbacks)]  # the model, its batch for 128 px, 128 px, the heartbeat
    assert metrics["test_accuracy"] == 0.5 and metrics["test_accuracy_tta"] == 1.0
    np.testing.assert_allclose(probs, _orientation_model(images))
    np.testing.assert_allclose(probs_tta, [[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]], atol=1e-6)
    assert metrics["test_loss_tta"] == pytest.approx(-np.log(0.5), rel=1e-5)
    assert metrics["test_loss_tta"] != metrics["test_loss"]
    metrics, _, none = evaluation.measure_on_test(object(), images, np.array([0, 0]), NAMES, 32, tta=False)
    assert none is None and "test_accuracy_tta" not in metrics


def test_tta_accuracy_can_differ_from_the_plain_accuracy():
    probs = _probs(np.array([0, 1, 1]), np.array([0.6, 0.6, 0.6]))
    tta = _probs(np.array([0, 2, 1]), np.array([0.6, 0.7, 0.6]))
    metrics = compute_metrics(np.array([0, 2, 1]), probs, NAMES, probs_tta=tta)
    assert metrics["test_accuracy"] == pytest.approx(2 / 3) and metrics["test_accuracy_tta"] == 1.0


def test_top_k_lists_the_most_likely_first():
    probs = np.array([[0.1, 0.5, 0.2, 0.15, 0.05], [0.3, 0.05, 0.05, 0.2, 0.4]])
    names = ("a", "b", "c", "d", "e")
    assert top_k(probs, names, 3) == [[("b", 0.5), ("c", 0.2), ("d", 0.15)], [("e", 0.4), ("a", 0.3), ("d", 0.2)]]
    assert top_k(probs, names) == top_k(probs, names, 3)
    assert [len(row) for row in top_k(probs, names, 1)] == [1, 1]


@pytest.mark.parametrize("size,batch", [(None, 256), (32, 256), (64, 256), (128, 64), (224, 20), (2048, 8)])
def test_inference_batches_hold_a_fixed_pixel_budget(size, batch):
    assert inference_batch_size(size) == batch


def test_predict_proba_runs_the_model_on_the_pipeline_and_averages_for_tta(capsys):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((8, 8, 3))  # the 4 px images are resized to the model's 8 px on the way
    # Softmax over (left half mean, right half mean) of channel 0: orientation-dependent.
    left = keras.layers.Lambda(lambda x: keras.ops.mean(x[:, :, :4, :1], axis=(1, 2)))(inputs)
    right = keras.layers.Lambda(lambda x: keras.ops.mean(x[:, :, 4:, :1], axis=(1, 2)))(inputs)
    logits = keras.layers.Concatenate()([left, right])
    model = keras.Model(inputs, keras.layers.Activation("softmax")(logits / 50.0))

    class CountBatches(keras.callbacks.Callback):
        batches = 0

        def on_predict_batch_end(self, batch, logs=None):
            CountBatches.batches += 1

    images = _left_heavy(3)
    plain = evaluation.predict_proba(model, images, input_size=8, callbacks=[CountBatches()])
    assert CountBatches.batches == 1  # 3 images fit the 8 px budget's batch of 256
    averaged = evaluation.predict_proba(model, images, input_size=8, tta=True, batch_size=2,
                                        callbacks=[CountBatches()])
    assert CountBatches.batches == 1 + 2 * 2  # two passes of two batches of at most 2
    assert plain.dtype == np.float32 and plain.shape == (3, 2)
    assert (plain[:, 0] > 0.9).all()
    np.testing.assert_allclose(averaged, 0.5, atol=1e-6)
    assert capsys.readouterr().out == ""  # no progress bars in the pages' logs
