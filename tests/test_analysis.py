"""The insight lab's computations, each on synthetic data with a known answer, and the analysis files."""
import shutil

import numpy as np
import pytest
from helpers import ANALYSIS_DAMAGES, CLASSES, write_sound_analyses

from cifar_core import analysis
from cifar_core.analysis import calibration, corruptions, embedding, files, labels
from cifar_core.errors import ConfigError, RunFolderError

RNG = np.random.default_rng(0)


# --- calibration --------------------------------------------------------------------------------

def _sampled(logits: np.ndarray, seed: int = 1) -> np.ndarray:
    """Labels drawn from softmax(logits): predictions calibrated by construction."""
    probs = calibration.softmax(logits)
    rng = np.random.default_rng(seed)
    return np.array([rng.choice(len(p), p=p) for p in probs])


def test_temperature_scaling_recovers_the_temperature_that_made_logits_overconfident():
    logits = RNG.normal(size=(20_000, 10)) * 2.0
    truth = _sampled(logits)
    assert calibration.fit_temperature(logits * 3.0, truth) == pytest.approx(3.0, rel=0.08)
    assert calibration.fit_temperature(logits / 2.0, truth) == pytest.approx(0.5, rel=0.08)
    assert calibration.fit_temperature(logits, truth) == pytest.approx(1.0, rel=0.08)


def test_ece_is_about_zero_when_calibrated_and_large_for_a_confident_wrong_model():
    logits = RNG.normal(size=(20_000, 10)) * 2.0
    truth = _sampled(logits)
    assert calibration.expected_calibration_error(calibration.softmax(logits), truth) < 0.02
    wrong = np.full((1000, 10), 0.001 / 9)
    wrong[:, 0] = 0.999
    assert calibration.expected_calibration_error(wrong, np.ones(1000, int)) == pytest.approx(0.999)


def test_reliability_bins_nll_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    truth = np.array([0, 1, 1, 0])
    bins = calibration.reliability_bins(probs, truth, n_bins=5)  # (0,.2] (.2,.4] (.4,.6] (.6,.8] (.8,1]
    assert [b["count"] for b in bins] == [0, 0, 2, 1, 1]
    assert bins[2]["confidence"] == pytest.approx(0.55) and bins[2]["accuracy"] == 0.5  # 0.6 wrong, 0.5 right
    assert bins[3]["accuracy"] == 1.0 and bins[4]["accuracy"] == 1.0 and bins[0]["confidence"] is None
    assert calibration.expected_calibration_error(probs, truth, 5) == pytest.approx(
        2 / 4 * 0.05 + 1 / 4 * 0.2 + 1 / 4 * 0.1)
    assert calibration.nll(probs, truth) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.8, 0.5])))
    assert calibration.brier(probs, truth) == pytest.approx(np.mean([0.02, 0.72, 0.08, 0.5]))


def test_the_report_measures_on_the_test_logits_with_the_fitted_temperature():
    logits = RNG.normal(size=(5000, 10)) * 2.0
    truth = _sampled(logits)
    report = calibration.calibration_report(logits[:2500] * 4, truth[:2500], logits[2500:] * 4, truth[2500:],
                                            "held out")
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert report["n_fit"] == 2500 and report["fitted_on"] == "held out" and len(report["bins"]["after"]) == 15


# --- corruptions and robustness -----------------------------------------------------------------

IMAGES = RNG.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_severity_zero_is_the_identity_and_every_severity_changes_the_images(name):
    np.testing.assert_array_equal(corruptions.corrupt(IMAGES, name, 0), IMAGES)
    for severity in corruptions.SEVERITIES:
        changed = corruptions.corrupt(IMAGES, name, severity)
        assert changed.dtype == np.uint8 and changed.shape == IMAGES.shape
        assert not np.array_equal(changed, IMAGES)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "gaussian_blur", "defocus_blur", "brightness",
                                  "contrast", "jpeg", "pixelate"])
def test_damage_grows_with_severity(name):
    damage = [np.abs(corruptions.corrupt(IMAGES, name, s).astype(int) - IMAGES).mean() for s in range(6)]
    assert damage == sorted(damage) and damage[5] > damage[1]


def test_corruptions_are_seeded_and_unknown_ones_refused():
    np.testing.assert_array_equal(corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=4),
                                  corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=4))
    assert not np.array_equal(corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=4),
                              corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=5))
    with pytest.raises(ValueError, match="unknown corruption"):
        corruptions.corrupt(IMAGES, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(IMAGES, "contrast", 6)


def test_noise_is_the_seeded_draw_added_to_the_image_and_clipped_to_its_range():
    grey = np.full((2, 4, 4, 3), 200, np.uint8)
    draw = np.random.default_rng([0, corruptions.CORRUPTIONS.index("gaussian_noise"), 2]).normal(
        size=grey.shape, scale=corruptions.PARAMETERS["gaussian_noise"][1])
    expected = np.round(np.clip(200 / 255 + draw, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(corruptions.corrupt(grey, "gaussian_noise", 2), expected)  # seed 0 by default
    for level, (low, high) in ((0, (0, 127)), (255, (128, 255))):  # no wrap-around past black or white
        noisy = corruptions.corrupt(np.full((4, 8, 8, 3), level, np.uint8), "gaussian_noise", 5)
        assert low <= noisy.min() and noisy.max() <= high


def test_an_unknown_corruption_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: gaussian_noise, shot_noise, gaussian_blur"):
        corruptions.corrupt(IMAGES, "fog", 1)


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur"])
def test_blurs_mix_neither_images_nor_channels(name):
    images = np.zeros((3, 16, 16, 3), np.uint8)
    images[1, :, :, 0] = RNG.integers(0, 256, (16, 16))  # only image 1, only its red channel
    blurred = corruptions.corrupt(images, name, 5)
    assert blurred[[0, 2]].max() == 0 and blurred[1, :, :, 1:].max() == 0
    assert not np.array_equal(blurred[1], images[1])


@pytest.mark.parametrize("radius, points", [(0.5, 1), (1.0, 5), (1.5, 9), (2.0, 13)])
def test_the_defocus_kernel_is_a_normalised_symmetric_disk(radius, points):
    kernel = corruptions._disk(radius, alias_blur=0.01)  # next to no alias blur: the disk itself
    assert kernel.shape == (17, 17) and kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert (kernel > 1e-6).sum() == points and kernel[8, 8] == kernel.max()


def test_the_defocus_alias_blur_spreads_a_point_over_3x3_only():
    kernel = corruptions._disk(0.3, alias_blur=0.4)  # the disk is one point
    inside = np.argwhere(kernel > 0)
    assert inside.min(axis=0).tolist() == [7, 7] and inside.max(axis=0).tolist() == [9, 9]
    assert kernel.sum() == pytest.approx(1.0)


def test_contrast_moves_each_channel_of_each_image_towards_its_own_mean():
    images = np.zeros((2, 2, 2, 3), np.uint8)
    images[0, :, 0, 0], images[0, :, 1, 0] = 0, 200  # red: mean 100
    images[0, :, :, 1] = 50  # green: flat
    images[1] = 255  # a white image
    out = corruptions.corrupt(images, "contrast", 1).astype(int)  # factor 0.75
    assert sorted(set(out[0, :, :, 0].ravel())) == [25, 175]
    assert (out[0, :, :, 1] == 50).all() and (out[0, :, :, 2] == 0).all() and (out[1] == 255).all()


def test_pixelate_averages_boxes_and_enlarges_them_back():
    blocks = np.kron(np.array([[0, 255], [90, 30]], np.uint8), np.ones((2, 2), np.uint8))
    image = np.repeat(blocks[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(corruptions._pixelate(image, 0.5), image)  # 2x2 boxes survive
    checker = np.repeat((np.indices((4, 4)).sum(0) % 2 * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    assert len(np.unique(corruptions._pixelate(checker, 0.5))) == 1  # each box is its average


def test_brightness_lifts_black_to_grey_and_keeps_hue():
    black_and_red = np.zeros((1, 1, 2, 3), np.uint8)
    black_and_red[0, 0, 1] = (200, 0, 0)
    out = corruptions.corrupt(black_and_red, "brightness", 5)  # value + 0.3
    assert tuple(out[0, 0, 0]) == (76, 76, 76)
    assert out[0, 0, 1, 0] == 255 and out[0, 0, 1, 1] == 0 and out[0, 0, 1, 2] == 0
    orange = np.array([[[[250, 100, 0]]]], np.uint8)
    assert corruptions.corrupt(orange, "brightness", 5)[0, 0, 0].tolist() == [255, 102, 0]  # value capped at 1


class TextureRun:
    """A fixed Keras model that calls an image 'textured' (class 1) when its high-frequency energy
    is high, else 'flat' (class 0): noise must make flat images look textured."""

    def __init__(self):
        import keras

        inputs = keras.Input((32, 32, 3))
        grey = keras.layers.Lambda(lambda x: keras.ops.mean(x, axis=-1, keepdims=True))(inputs)
        laplacian = keras.layers.Conv2D(1, 3, use_bias=False, trainable=False)
        edges = laplacian(grey)
        laplacian.set_weights([np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)[:, :, None, None]])
        energy = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(keras.ops.abs)(edges))
        score = keras.layers.Lambda(lambda e: (e - 12.0) / 4.0)(energy)
        logits = keras.layers.Concatenate()([-score, score])
        self.model = keras.Model(inputs, keras.layers.Softmax()(logits))
        self.input_size = self.data_image_size = 32


def _flat_and_textured(n: int = 40):
    rng = np.random.default_rng(3)
    flat = np.repeat(rng.integers(60, 200, (n, 1, 1, 1)), 32, 1).repeat(32, 2).repeat(3, 3)
    # A faint checkerboard (amplitude 8): textured to the model, and FGSM at 4/255 can flatten it.
    checks = (np.indices((32, 32)).sum(0) % 2 * 8 + 100)[None, :, :, None].repeat(n, 0).repeat(3, 3)
    return np.concatenate([flat, checks]).astype(np.uint8), np.array([0] * n + [1] * n)


@pytest.mark.integration
def test_noise_accuracy_falls_with_severity_and_fgsm_at_zero_is_clean_accuracy():
    from cifar_core.analysis.robustness import measure_robustness

    images, truth = _flat_and_textured()
    report = measure_robustness(TextureRun(), images, truth, subset=80, seed=0, epsilons=(0.0, 4 / 255),
                                progress=lambda line: None)
    assert report["clean_accuracy"] == 1.0 and report["subset_size"] == 80
    noise = report["corruptions"]["gaussian_noise"]
    assert noise == sorted(noise, reverse=True) and noise[-1] < 0.75
    assert report["fgsm"][0]["accuracy"] == report["clean_accuracy"]
    assert report["fgsm"][-1]["accuracy"] < report["clean_accuracy"]
    assert report["mean_corruption_accuracy"] == pytest.approx(
        np.mean([a for accs in report["corruptions"].values() for a in accs]))


def test_the_subset_is_the_same_for_every_model():
    from cifar_core.analysis.robustness import subset_indices

    np.testing.assert_array_equal(subset_indices(10_000, 2000, 0), subset_indices(10_000, 2000, 0))
    assert len(set(subset_indices(10_000, 2000, 0))) == 2000 and len(subset_indices(50, 2000, 0)) == 50


# --- neighbours and the embedding ---------------------------------------------------------------

def test_a_training_images_nearest_neighbour_is_itself():
    features = RNG.normal(size=(500, 32)).astype(np.float32)
    index = embedding.neighbour_index(features, RNG.integers(0, 10, 500), dimensions=16)
    assert index["features"].dtype == np.float16 and index["features"].shape == (500, 16)
    found, similarity = embedding.nearest(index, features[[7, 123]], k=3)
    assert list(found[:, 0]) == [7, 123] and np.all(similarity[:, 0] > 0.99)
    assert np.all(np.diff(similarity, axis=1) <= 0)  # most similar first


def test_the_neighbour_search_centres_the_query_and_keeps_its_dtypes():
    # Features far from the origin: a query not centred on the index's mean finds the wrong images.
    features = (RNG.normal(size=(400, 24)) + 25.0).astype(np.float32)
    labels_ = RNG.integers(0, 10, 400)
    index = embedding.neighbour_index(features, labels_, dimensions=12)
    assert {key: value.dtype for key, value in index.items()} == {
        "mean": np.float32, "components": np.float32, "features": np.float16, "labels": np.int16}
    np.testing.assert_array_equal(index["labels"], labels_)
    found, similarity = embedding.nearest(index, features[[3, 250, 399]])
    assert found.shape == (3, 8) and similarity.dtype == np.float32  # k=8 by default
    assert list(found[:, 0]) == [3, 250, 399]
    assert np.all(similarity[:, 1:] < similarity[:, :1])


@pytest.mark.parametrize("shape, dimensions, kept", [((500, 8), 16, 8), ((5, 32), 16, 5), ((300, 32), 16, 16)])
def test_the_neighbour_index_keeps_no_more_dimensions_than_the_features_allow(shape, dimensions, kept):
    index = embedding.neighbour_index(RNG.normal(size=shape), RNG.integers(0, 10, shape[0]), dimensions)
    assert index["features"].shape == (shape[0], kept) and index["components"].shape == (kept, shape[1])


def test_the_neighbour_index_and_the_map_are_reproducible():
    # Large enough for scikit-learn's randomized PCA solver, which draws from the seed.
    features = RNG.normal(size=(600, 700)).astype(np.float32)
    first, second = (embedding.neighbour_index(features, np.zeros(600, int), 32) for _ in range(2))
    np.testing.assert_array_equal(first["components"], second["components"])
    small = features[:80, :40]
    np.testing.assert_array_equal(embedding.project_2d(small), embedding.project_2d(small))


def test_unit_rows_have_length_one_and_zero_rows_stay_zero():
    np.testing.assert_allclose(embedding._unit(np.array([[0.3, 0.4], [0.0, 0.0], [3.0, 4.0]])),
                               [[0.6, 0.8], [0.0, 0.0], [0.6, 0.8]])


@pytest.mark.parametrize("shape", [(30, 60), (100, 5)])
def test_the_map_reduces_to_what_the_points_and_features_allow(shape):
    coords = embedding.project_2d(RNG.normal(size=shape))  # pca_dimensions 50 is more than either
    assert coords.shape == (shape[0], 2) and np.isfinite(coords).all()


def test_a_map_is_reproducible_where_pca_takes_its_randomized_solver():
    # scikit-learn's PCA draws at random for wide features and few components (the real maps: 10,000 x
    # 1,280 to 50); unseeded, the same features gave maps 45 units apart.
    from sklearn.decomposition import PCA

    features = RNG.normal(size=(60, 600))
    assert PCA(10).fit(features)._fit_svd_solver == "randomized"
    np.testing.assert_array_equal(embedding.project_2d(features, 10), embedding.project_2d(features, 10))


def test_t_sne_maps_the_pca_dimensions_asked_for(monkeypatch):
    import sklearn.manifold

    seen = []

    class Recording(sklearn.manifold.TSNE):
        def fit_transform(self, X, y=None):
            seen.append(X.shape)
            return super().fit_transform(X)

    monkeypatch.setattr(sklearn.manifold, "TSNE", Recording)
    embedding.project_2d(RNG.normal(size=(40, 20)), pca_dimensions=3)
    embedding.project_2d(RNG.normal(size=(60, 60)))  # t-SNE's usual 50 unless the points or features allow fewer
    assert seen == [(40, 3), (60, 50)]


@pytest.mark.parametrize("n_points, perplexity", [(2, 2.0), (10, 3.0), (31, 10.0), (91, 30.0), (5000, 30.0)])
def test_the_perplexity_stays_below_the_number_of_points(n_points, perplexity):
    assert embedding.tsne_perplexity(n_points) == perplexity


def test_the_embedding_keeps_clusters_apart():
    centres = RNG.normal(size=(3, 20)) * 10
    points = np.concatenate([c + RNG.normal(size=(60, 20)) for c in centres])
    coords = embedding.project_2d(points, pca_dimensions=10)
    groups = [coords[i * 60:(i + 1) * 60] for i in range(3)]
    inside = max(np.linalg.norm(g - g.mean(0), axis=1).mean() for g in groups)
    apart = min(np.linalg.norm(a.mean(0) - b.mean(0)) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert coords.shape == (180, 2) and apart > 2 * inside


# --- label issues -------------------------------------------------------------------------------

def test_deliberately_flipped_labels_rank_first():
    truth = np.arange(300) % 10
    probs = np.full((300, 10), 0.02)
    probs[np.arange(300), truth] = 0.82
    flipped = RNG.choice(300, 12, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 3) % 10
    issues = labels.rank_label_issues(given, probs, keep=50)
    assert {i["index"] for i in issues[:12]} == set(flipped.tolist())
    assert all(i["flagged"] for i in issues[:12]) and not any(i["flagged"] for i in issues[12:])
    first = issues[0]
    assert first["suggested"] == truth[first["index"]] and first["given"] == given[first["index"]]
    assert first["quality"] == pytest.approx(0.02)


def test_marks_round_trip_and_accuracy_without_them(tmp_path):
    path = tmp_path / "marks.json"
    assert labels.read_marks(path) == set()
    labels.write_marks({4, 2}, path)
    assert labels.read_marks(path) == {2, 4}
    truth, guessed = np.array([0, 1, 2, 3, 4]), np.array([0, 1, 0, 3, 0])
    assert labels.accuracy_without(truth, guessed, set()) == pytest.approx(0.6)
    assert labels.accuracy_without(truth, guessed, {2, 4}) == 1.0
    for bad in ('{"wrong_labels": [1, "x"]}', '{"wrong_labels": [-1]}', "[1, 2]", '{"wrong_labels": [true]}'):
        path.write_text(bad)
        with pytest.raises(RunFolderError):
            labels.read_marks(path)


def test_one_mark_changes_only_its_own_image_and_waits_for_another_writer(tmp_path):
    import fcntl
    import os
    import threading

    path = tmp_path / "artifacts" / "fresh" / "marks.json"  # its folders made on the first mark
    assert labels.set_mark(7, True, path) == {7}
    assert labels.set_mark(3, True, path) == {3, 7}
    assert labels.set_mark(7, False, path) == {3} == labels.read_marks(path)
    assert labels.set_mark(9, False, path) == {3}  # unmarking an unmarked image changes nothing
    held = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another visitor's page, between its read and its write
    marking = threading.Thread(target=labels.set_mark, args=(5, True, path))
    marking.start()
    marking.join(timeout=0.3)
    assert marking.is_alive()  # it waits, rather than read the marks the other is about to replace
    labels.write_marks({3, 4}, path)  # what the other visitor wrote
    os.close(held)
    marking.join(timeout=10)
    assert labels.read_marks(path) == {3, 4, 5}


# --- the runner and its files -------------------------------------------------------------------

@pytest.mark.integration
def test_analyze_writes_every_file_once_and_again_when_the_model_changes(shipped_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(shipped_runs["runs"] / "g3-tiny", run_dir)
    lines = []
    outcome = analysis.analyze(run_dir, source=str(shipped_runs["data"]), progress=lines.append)
    assert outcome == {name: "computed" for name in analysis.ANALYSES} and any("done in" in line for line in lines)
    coords = files.read_npz(analysis.analysis_path(run_dir, "embedding"), ("coords", "indices", "labels",
                                                                            "predictions"))
    assert coords["coords"].shape == (9, 2) and list(coords["indices"]) == list(range(9))
    report = files.read_json(analysis.analysis_path(run_dir, "calibration"))
    assert report["temperature"] > 0 and report["fitted_on"].startswith("the run's validation split")
    robustness = files.read_json(analysis.analysis_path(run_dir, "robustness"))
    assert set(robustness["corruptions"]) == set(corruptions.CORRUPTIONS) and len(robustness["fgsm"]) == 5
    assert isinstance(files.read_json(analysis.analysis_path(run_dir, "labels")), list)
    assert files.read_npz(run_dir / "analysis" / analysis.NEIGHBOURS_FILE, ("features",))["features"].shape[0] == 18
    # What analyze writes, the pages' validating reader accepts, field by field.
    for name in (*analysis.ANALYSES, analysis.NEIGHBOURS_FILE):
        assert files.read_analysis(run_dir, name) is not None, name

    assert set(analysis.analyze(run_dir, ("calibration",), source=str(shipped_runs["data"]),
                                progress=lines.append).values()) == {"up to date"}
    with open(run_dir / "model.keras", "ab") as handle:
        handle.write(b"\0")  # a different model file (a zip tolerates trailing bytes)
    assert analysis.analyze(run_dir, ("labels",), progress=lines.append) == {"labels": "computed"}


def test_only_names_known_analyses():
    assert analysis.parse_only(None) == analysis.ANALYSES
    assert analysis.parse_only("labels, calibration") == ("labels", "calibration")
    with pytest.raises(ConfigError, match="unknown analysis umap"):
        analysis.parse_only("labels,umap")


def test_a_corrupt_or_oversized_analysis_file_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "analysis" / "embedding.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip")
    with pytest.raises(RunFolderError, match="corrupt embedding.npz"):
        files.read_npz(path, ("coords",))
    files.write_npz(path, {"coords": np.zeros((4, 2))}, "abc")
    with pytest.raises(RunFolderError, match="corrupt"):  # an array is missing
        files.read_npz(path, ("coords", "labels"))
    monkeypatch.setattr(files, "MAX_NPZ_BYTES", 64)
    files.write_npz(path, {"coords": np.zeros((4000, 2))}, "abc")  # compresses small, unpacks large
    with pytest.raises(RunFolderError):
        files.read_npz(path, ("coords",))
    assert files.stamped_fingerprint(path) == "abc" and files.stamped_fingerprint(tmp_path / "absent.npz") is None


@pytest.mark.integration
def test_newer_computations_redo_older_files(shipped_runs, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(shipped_runs["runs"] / "g3-tiny", run_dir)
    assert analysis.analyze(run_dir, ("labels",), progress=print) == {"labels": "computed"}
    assert analysis.analyze(run_dir, ("labels",), progress=print) == {"labels": "up to date"}
    monkeypatch.setattr(analysis, "COMPUTATION_VERSION", analysis.COMPUTATION_VERSION + 1)
    assert analysis.analyze(run_dir, ("labels",), progress=print) == {"labels": "computed"}


def test_the_calibration_file_has_its_contract_each_field_equal_to_its_measure():
    logits = RNG.normal(size=(400, 4)) * 3.0
    truth = _sampled(logits, seed=7)
    report = calibration.calibration_report(logits[:200], truth[:200], logits[200:], truth[200:], "somewhere")
    assert set(report) == {"temperature", "fitted_on", "n_fit", "n_test", "bins_count", "ece_before", "ece_after",
                           "nll_before", "nll_after", "brier_before", "brier_after", "bins"}
    temperature = report["temperature"]
    assert temperature == calibration.fit_temperature(logits[:200], truth[:200])
    for when, probs in (("before", calibration.softmax(logits[200:])),
                        ("after", calibration.softmax(logits[200:], temperature))):
        assert report[f"ece_{when}"] == calibration.expected_calibration_error(probs, truth[200:])
        assert report[f"nll_{when}"] == calibration.nll(probs, truth[200:])
        assert report[f"brier_{when}"] == calibration.brier(probs, truth[200:])
        assert report["bins"][when] == calibration.reliability_bins(probs, truth[200:])
    assert (report["n_fit"], report["n_test"], report["bins_count"]) == (200, 200, 15)


def test_softmax_holds_for_huge_logits_and_every_measure_is_computed_in_float64():
    probs = calibration.softmax(np.array([[1000.0, 0.0], [0.0, -1000.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0], [1.0, 0.0]])
    # float16 inputs: the measures are made in float64, not in the inputs' precision.
    logits = np.array([[2.001, 0.0, -1.0]], np.float16)
    assert calibration.softmax(logits).dtype == np.float64
    probs = np.array([[0.6667, 0.3333]], np.float16)
    assert calibration.nll(probs, np.array([0])) == -np.log(np.float64(probs[0, 0]))  # float16's log: 0.40576


def test_a_confidence_of_zero_joins_the_first_bin_not_the_last():
    bins = calibration.reliability_bins(np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([1, 0]), n_bins=4)
    assert [b["count"] for b in bins] == [1, 0, 0, 1]
    assert [(b["lower"], b["upper"]) for b in bins] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]


def test_brier_of_float16_probabilities_is_computed_in_float64():
    probs = np.array([[0.3333, 0.3333, 0.3334]], np.float16)
    assert calibration.brier(probs, np.array([0])) == pytest.approx(
        (0.3333 - 1) ** 2 + 0.3333 ** 2 + 0.3334 ** 2, abs=2e-3)
    exact = probs.astype(np.float64) - [1, 0, 0]  # float16's own arithmetic rounds at the fourth digit
    assert calibration.brier(probs, np.array([0])) == pytest.approx(float(np.sum(exact ** 2)), rel=1e-12)


def test_marks_accept_every_index_from_zero_and_refuse_anything_else(tmp_path):
    path = tmp_path / "marks.json"
    path.write_text('{"wrong_labels": [0, 9999999]}')
    assert labels.read_marks(path) == {0, 9_999_999}
    for bad in ('{"wrong_labels": [10000000]}', '{"wrong_labels": 3}', '{"other": [1]}'):
        path.write_text(bad)
        with pytest.raises(RunFolderError, match="'wrong_labels' must be a list of test indices"):
            labels.read_marks(path)
    path.write_text("{not json")
    with pytest.raises(RunFolderError):
        labels.read_marks(path)
    labels.write_marks({3, 1}, path)
    assert path.read_text() == '{\n "wrong_labels": [\n  1,\n  3\n ]\n}\n'


def test_accuracy_without_ignores_marks_past_the_end_and_is_nan_when_nothing_is_left():
    truth, guessed = np.array([0, 1, 2]), np.array([0, 0, 2])
    assert labels.accuracy_without(truth, guessed, {3, 99}) == pytest.approx(2 / 3)
    assert labels.accuracy_without(truth, guessed, {1}) == 1.0
    assert np.isnan(labels.accuracy_without(truth, guessed, {0, 1, 2}))


def test_equal_quality_keeps_test_order():
    # 100 images: more than a quicksort leaves in order (numpy's sorts only small runs by insertion).
    truth = np.zeros(100, int)
    probs = np.tile([[0.5, 0.5]], (100, 1))
    probs[::7] = [0.2, 0.8]  # every seventh label more doubtful, the rest equally so
    ranked = [issue["index"] for issue in labels.rank_label_issues(truth, probs, keep=20)]
    assert ranked == list(range(0, 100, 7)) + [1, 2, 3, 4, 5]
    assert labels.rank_label_issues(truth, probs, keep=2)[0]["quality"] == pytest.approx(0.2)


def test_maps_draw_the_same_seeded_sample_of_points():
    from cifar_core.analysis.embedding import map_sample

    np.testing.assert_array_equal(map_sample(40, size=100), np.arange(40))
    chosen = map_sample(10_000, size=3000)
    assert len(chosen) == len(set(chosen)) == 3000 and np.all(np.diff(chosen) > 0)
    assert chosen.max() < 10_000 and chosen.max() > 9_000 and chosen.min() < 1_000  # spread over the maps
    np.testing.assert_array_equal(chosen, map_sample(10_000, size=3000))  # every map, every visit


@pytest.mark.parametrize("name,damage", [(name, damage) for name, damages in ANALYSIS_DAMAGES.items()
                                         for damage in damages])
def test_an_analysis_file_unlike_what_analyze_writes_is_refused_in_one_line(tmp_path, name, damage):
    from cifar_core.analysis import analysis_path

    run_dir = tmp_path / "run"
    write_sound_analyses(run_dir)
    assert files.read_analysis(run_dir, name) is not None  # sound as analyze writes it
    change, refusal = ANALYSIS_DAMAGES[name][damage]
    change(analysis_path(run_dir, name))
    with pytest.raises(RunFolderError, match=refusal) as refused:
        files.read_analysis(run_dir, name)
    assert f"{analysis_path(run_dir, name).name} in run" in str(refused.value) and "\n" not in str(refused.value)


def test_an_analysis_is_read_only_for_a_run_that_says_its_classes_and_test_images(tmp_path):
    from cifar_core import runs


    run_dir = tmp_path / "run"
    write_sound_analyses(run_dir, n_test=6)
    assert files.read_analysis(run_dir, "labels")[1]["index"] == 5  # below 6: in range
    write_sound_analyses(run_dir, n_test=5)
    with pytest.raises(RunFolderError, match="distinct test images"):
        files.read_analysis(run_dir, "labels")  # the same file, for a run with fewer test images
    runs.atomic_write_json(run_dir / runs.DATA_FILE, {"class_names": list(CLASSES)})
    with pytest.raises(RunFolderError, match="does not say its classes and test images"):
        files.read_analysis(run_dir, "calibration")
    (run_dir / "analysis" / "calibration.json").unlink()
    assert files.read_analysis(run_dir, "calibration") is None


def test_analysis_files_are_written_into_new_folders_stamped_and_read_back(tmp_path):
    folder = tmp_path / "run" / "analysis"
    arrays = {"coords": np.arange(6, dtype=np.float32).reshape(3, 2), "labels": np.array([0, 2, 1])}
    files.write_npz(folder / "embedding.npz", arrays, "model-a")  # each writer makes the folders it needs
    report = {"temperature": 1.5, "nested": {"bins": [1, 2]}}
    files.write_json(tmp_path / "other" / "analysis" / "calibration.json", report, "model-a")
    files.write_json(folder / "calibration.json", report, "model-a")
    files.write_json(folder / "calibration.json", report, "model-b")  # again, into the folder it made
    assert files.read_json(folder / "calibration.json") == report
    assert (folder / "calibration.json").read_text().endswith("}\n")
    read = files.read_npz(folder / "embedding.npz", ("coords", "labels"))
    assert all(np.array_equal(read[k], arrays[k]) and read[k].dtype == arrays[k].dtype for k in arrays)
    assert files.stamped_fingerprint(folder / "calibration.json") == "model-b"
    assert files.stamped_fingerprint(folder / "embedding.npz") == "model-a"
    (folder / "embedding.npz").unlink()
    assert files.stamped_fingerprint(folder / "embedding.npz") is None  # a stamp outlives no file
    assert files.read_json(folder / "absent.json") is None and files.read_npz(folder / "embedding.npz", ()) is None


def test_an_analysis_file_that_is_no_small_regular_file_is_refused_in_one_line(tmp_path, monkeypatch):
    import os

    run_dir = tmp_path / "run"
    write_sound_analyses(run_dir)
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 64)
    with pytest.raises(RunFolderError, match=r"^calibration.json: JSON file is .*; the limit is 64 bytes"):
        files.read_analysis(run_dir, "calibration")
    path = analysis.analysis_path(run_dir, "labels")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(RunFolderError, match="is a device, pipe or socket"):
        files.read_analysis(run_dir, "labels")


def test_pixelate_averages_boxes_across_the_width_and_down_the_height_of_a_wide_image():
    stripes = np.zeros((4, 8, 3), np.uint8)
    stripes[:, ::2] = 255  # vertical stripes one pixel wide
    for image in (stripes, np.ascontiguousarray(stripes.transpose(1, 0, 2))[:4]):  # and horizontal ones
        pixelated = corruptions._pixelate(image, 0.5)
        assert pixelated.shape == image.shape and len(np.unique(pixelated)) == 1, image[:, :, 0]


def test_the_gaussian_blur_repeats_the_edge_pixels_as_cifar_10_c_does():
    # CIFAR-10-C blurred with skimage's gaussian, whose border mode is 'nearest': beyond the edge the
    # edge pixel repeats. A bright first column then keeps every weight left of the centre.
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[:, :, 0] = 255
    sigma = corruptions.PARAMETERS["gaussian_blur"][4]
    weights = np.exp(-np.arange(-4, 5) ** 2 / (2 * sigma ** 2))  # scipy's kernel reaches 4 sigma
    expected = 255 * weights[:5].sum() / weights.sum()
    blurred = corruptions.corrupt(image, "gaussian_blur", 5)
    assert np.all(np.abs(blurred[0, :, 0].astype(float) - expected) <= 1.0), (blurred[0, 0, 0], expected)
