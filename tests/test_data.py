"""Datasets, the IDX reader, the augmentation and the seeded, resumable batch loader."""
import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nets.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchLoader,
    ImageSet,
    PadCropFlip,
    derive_generator,
    load_dataset,
    parse_idx,
    read_idx,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO_ROOT / ".." / "shared" / "data" / "mnist-t10k"
needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST t10k files in {SHARED_MNIST}"
)


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(directory: Path, prefix: str, count: int, rng: np.random.Generator, compress: bool) -> None:
    """Fake MNIST files of `count` random images, laid out like the real ones."""
    directory.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        raw = idx_bytes(array, 0x08)
        path = directory / f"{prefix}-{kind}-idx{ndim}-ubyte"
        if compress:
            with gzip.open(f"{path}.gz", "wb") as f:
                f.write(raw)
        else:
            path.write_bytes(raw)


# ---------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_round_trip(dtype, code, tmp_path):
    rng = np.random.default_rng(11)
    array = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    assert np.array_equal(parse_idx(idx_bytes(array, code)), array)
    path = tmp_path / "x-idx3.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(array, code))
    read = read_idx(path)
    assert read.dtype == np.dtype(dtype) and np.array_equal(read, array)


def test_idx_rejects_bad_files():
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x00\x01\x08\x01\x00\x00\x00\x01\x05", "bad-magic")
    with pytest.raises(ValueError, match=r"shape \(3,\) \(11 bytes\) but the file has 10"):
        parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2]), "short")


@needs_shared_mnist
def test_idx_reads_the_real_mnist_test_files():
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert np.bincount(labels).min() > 800


# ---------------------------------------------------------------- datasets

def check_normalized(data, tolerance=1e-3):
    images = data.train.images.double()
    assert abs(float(images.mean())) < tolerance and abs(float(images.std()) - 1) < tolerance


def test_digits_offline_split():
    data = load_dataset("digits")
    info = data.info
    assert (info.train_size, info.test_size, info.in_channels, info.image_size) == (1437, 360, 1, (8, 8))
    assert data.train.images.shape == (1437, 1, 8, 8) and data.train.images.dtype == torch.float32
    assert data.train.labels.dtype == torch.int64 and set(data.train.labels.tolist()) == set(range(10))
    check_normalized(data)
    # the split is a partition: no test image appears in train
    train = {tuple(row) for row in data.train.images.flatten(1).tolist()}
    assert not any(tuple(row) in train for row in data.test.images.flatten(1).tolist()[:50])
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.test.labels, data.test.labels) and torch.equal(again.test.images, data.test.images)
    assert not torch.equal(other.test.images, data.test.images)
    assert data.augment is None and "split with seed 0" in info.source


def test_digits_are_scikit_learns_own_without_importing_it():
    from nets.data.digits import digits_table

    bunch = pytest.importorskip("sklearn.datasets").load_digits()
    table = digits_table()
    assert np.array_equal(table[:, :-1].reshape(-1, 8, 8), bunch.images)
    assert np.array_equal(table[:, -1].astype(int), bunch.target)


def test_synthetic_is_seeded_and_configurable():
    data = load_dataset("synthetic", train_size=64, test_size=32, channels=1, image_size=12, num_classes=4)
    assert data.train.images.shape == (64, 1, 12, 12) and data.test.images.shape == (32, 1, 12, 12)
    assert data.info.num_classes == 4 and set(data.train.labels.tolist()) <= set(range(4))
    check_normalized(data)
    same = load_dataset("synthetic", train_size=64, test_size=32, channels=1, image_size=12, num_classes=4)
    assert torch.equal(same.train.images, data.train.images)
    other = load_dataset("synthetic", seed=5, train_size=64, test_size=32, channels=1, image_size=12, num_classes=4)
    assert not torch.equal(other.train.images, data.train.images)
    assert not torch.equal(data.train.images[:32], data.test.images), "train and test must be distinct draws"


def test_synthetic_task_is_learnable():
    """Orientation shows in the phase-free Fourier magnitude: nearest class mean finds it."""
    data = load_dataset("synthetic", train_size=1000, test_size=400, image_size=16)

    def spectrum(images):
        return torch.fft.fft2(images.double()).abs().mean(1).flatten(1)

    train, test = spectrum(data.train.images), spectrum(data.test.images)
    means = torch.stack([train[data.train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test, means).argmin(1)
    accuracy = float((predicted == data.test.labels).double().mean())
    assert accuracy > 0.8, f"nearest-mean accuracy on the synthetic task only {accuracy:.2f} (chance 0.1)"


@needs_shared_mnist
def test_mnist_from_the_shared_t10k_files():
    data = load_dataset("mnist", data_dir=SHARED_MNIST)
    info = data.info
    assert (info.train_size, info.test_size, info.in_channels, info.image_size) == (8000, 2000, 1, (28, 28))
    assert "t10k IDX files" in info.source and "8000 train / 2000 test" in info.source
    check_normalized(data)
    assert torch.equal(load_dataset("mnist", data_dir=SHARED_MNIST).test.labels, data.test.labels)
    assert not torch.equal(load_dataset("mnist", data_dir=SHARED_MNIST, seed=3).test.labels, data.test.labels)


def test_mnist_full_set_in_torchvision_layout(tmp_path):
    rng = np.random.default_rng(12)
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, "train", 60, rng, compress=False)
    write_mnist(raw, "t10k", 20, rng, compress=True)
    data = load_dataset("mnist", data_dir=tmp_path)
    assert (data.info.train_size, data.info.test_size) == (60, 20)
    assert "official" in data.info.source
    expected = read_idx(raw / "t10k-labels-idx1-ubyte.gz")
    assert data.test.labels.tolist() == expected.tolist()


def test_mnist_bare_t10k_directory_copy(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"no {SHARED_MNIST}")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(SHARED_MNIST / name) as src, open(tmp_path / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    plain = load_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(plain.train.images, load_dataset("mnist", data_dir=SHARED_MNIST).train.images)


def test_cifar10_from_batch_files(tmp_path):
    rng = np.random.default_rng(13)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, 4).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f)
    for data_dir in (tmp_path, folder):
        data = load_dataset("cifar10", data_dir=data_dir)
        assert (data.info.train_size, data.info.test_size, data.info.image_size) == (20, 4, (32, 32))
        assert data.info.augmentation == "PadCropFlip(pad=4, flip=True)"
        assert data.info.mean == CIFAR10_MEAN
    pixels = torch.from_numpy(batches["test_batch"]["data"]).view(4, 3, 32, 32).double() / 255
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    # two float32 roundings: pixel / 255 (<= 2**-25, amplified by 1 / std < 4.2) and the
    # normalized value (|value| < 4, half an ulp <= 2**-23): together < 2**-21
    assert torch.allclose(data.test.images.double(), (pixels - mean) / std, rtol=0, atol=2.0**-21)
    assert data.train.labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])


def test_missing_data_errors_name_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"no MNIST test files in '{tmp_path}'.*t10k-images-idx3-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"CIFAR-10 files missing in .*cifar-10-batches-py.*data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not any(tmp_path.iterdir()), "a failed load must not write into data_dir"
    with pytest.raises(ValueError, match="dataset 'mnist' needs data_dir"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_dataset("cifar10", data_dir=tmp_path / "absent")


@pytest.mark.parametrize("name, options, error, match", [
    ("imagenet", {}, ValueError, "unknown dataset 'imagenet'; choose one of 'digits', 'synthetic', 'mnist', 'cifar10'"),
    ("digits", {"image_size": 4}, ValueError,
     r"unknown option\(s\) 'image_size' for dataset 'digits'; allowed: seed, test_size"),
    ("digits", {"seed": -1}, ValueError, "seed=-1"),
    ("digits", {"test_size": 1797}, ValueError, "test_size=1797"),
    ("digits", {"download": "yes"}, TypeError, "download must be True or False"),
    ("synthetic", {"noise": -0.5}, ValueError, "noise=-0.5"),
    ("synthetic", {"num_classes": 1}, ValueError, "num_classes=1"),
    (None, {}, TypeError, "dataset name must be a str"),
])
def test_dataset_options_are_validated(name, options, error, match):
    with pytest.raises(error, match=match):
        load_dataset(name, **options)


def test_cifar10_constants_are_the_papers():
    assert CIFAR10_MEAN == (125.3 / 255, 123.0 / 255, 113.9 / 255)
    assert CIFAR10_STD == (63.0 / 255, 62.1 / 255, 66.7 / 255)


# ---------------------------------------------------------------- augmentation

def test_pad_crop_flip_moves_pixels_exactly(generator):
    images = torch.randn(32, 3, 8, 8, generator=generator)
    augment = PadCropFlip(pad=2)
    out = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(5)))
    replay = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 5, (32, 2), generator=replay)
    flips = torch.rand(32, generator=replay) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    for i in range(32):
        r, c = offsets[i].tolist()
        crop = padded[i, :, r:r + 8, c:c + 8]
        expected = crop.flip(-1) if flips[i] else crop
        assert torch.equal(out[i], expected), f"image {i}: offset {(r, c)}, flip {bool(flips[i])}"
    assert 0 < int(flips.sum()) < 32


def test_pad_crop_flip_without_pad_or_flip_is_identity(generator):
    images = torch.randn(4, 2, 5, 5, generator=generator)
    assert torch.equal(PadCropFlip(pad=0, flip=False)(images, torch.Generator().manual_seed(0)), images)
    with pytest.raises(ValueError, match="pad=5 must be smaller than the image sides 5x5"):
        PadCropFlip(pad=5)(images, torch.Generator())
    with pytest.raises(ValueError, match="pad=-1"):
        PadCropFlip(pad=-1)


# ---------------------------------------------------------------- batch loader

def indexed_set(n):
    """Images whose single pixel is their own index, so a batch shows which examples it holds."""
    return ImageSet(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n) % 10)


def test_loader_epoch_is_a_seeded_permutation():
    loader = BatchLoader(indexed_set(1000), batch_size=128, seed=3)
    assert len(loader) == 8
    batches = list(loader.epoch(0))
    assert [b.step for b in batches] == list(range(8)) and len(batches[-1].labels) == 1000 - 7 * 128
    seen = torch.cat([b.images.flatten() for b in batches]).long()
    assert torch.equal(seen.sort().values, torch.arange(1000)), "an epoch must visit every example once"
    assert torch.equal(torch.cat([b.labels for b in batches]), seen % 10)
    again = torch.cat([b.images.flatten() for b in BatchLoader(indexed_set(1000), 128, seed=3).epoch(0)])
    assert torch.equal(again.long(), seen)
    assert not torch.equal(loader.order(1), loader.order(0))
    assert not torch.equal(BatchLoader(indexed_set(1000), 128, seed=4).order(0), loader.order(0))


def test_cifar_sized_epoch_has_391_steps():
    assert len(BatchLoader(indexed_set(50000), batch_size=128)) == 391
    assert len(BatchLoader(indexed_set(50000), batch_size=128, drop_last=True)) == 390


def test_loader_resumes_bit_exactly_mid_epoch(generator):
    data = ImageSet(torch.randn(300, 3, 8, 8, generator=generator), torch.randint(0, 10, (300,), generator=generator))

    def run(loader, start_epoch=0, start_step=0):
        out = []
        for epoch in range(start_epoch, 3):
            out.extend(loader.epoch(epoch, start_step if epoch == start_epoch else 0))
        return out

    full = run(BatchLoader(data, 32, seed=7, augment=PadCropFlip(pad=2)))
    resumed = run(BatchLoader(data, 32, seed=7, augment=PadCropFlip(pad=2)), start_epoch=1, start_step=4)
    assert len(resumed) == len(full) - len(BatchLoader(data, 32)) - 4
    for a, b in zip(full[-len(resumed):], resumed):
        assert (a.epoch, a.step) == (b.epoch, b.step)
        assert torch.equal(a.images, b.images), f"epoch {a.epoch} step {a.step} differs after resuming"
        assert torch.equal(a.labels, b.labels)
    loader = BatchLoader(data, 32, seed=7, augment=PadCropFlip(pad=2))
    assert torch.equal(loader.batch(2, 5).images, full[2 * len(loader) + 5].images), "random access differs"
    first = loader.batch(0, 0)
    assert not torch.equal(first.images, data.images[loader.order(0)[:32]]), "augmentation must change the images"


def test_loader_without_shuffle_keeps_stored_order():
    loader = BatchLoader(indexed_set(50), batch_size=20, shuffle=False)
    assert [b.images.flatten().long().tolist() for b in loader.epoch(4)] == [
        list(range(0, 20)), list(range(20, 40)), list(range(40, 50))]


def test_loader_arguments_are_validated():
    data = indexed_set(10)
    with pytest.raises(ValueError, match="batch_size=0"):
        BatchLoader(data, 0)
    with pytest.raises(TypeError, match="data must be an ImageSet"):
        BatchLoader(torch.zeros(10), 2)
    with pytest.raises(TypeError, match="augment must be callable"):
        BatchLoader(data, 2, augment="flip")
    with pytest.raises(ValueError, match="leaves no batch"):
        BatchLoader(data, 20, drop_last=True)
    loader = BatchLoader(data, 4)
    with pytest.raises(ValueError, match=r"step=3 is not allowed; an epoch has 3 steps \(0..2\)"):
        loader.batch(0, 3)
    with pytest.raises(ValueError, match="start_step=4"):
        loader.epoch(0, start_step=4)
    with pytest.raises(ValueError, match="epoch=-1"):
        loader.order(-1)
    with pytest.raises(ValueError, match="images must be"):
        ImageSet(torch.zeros(3, 4), torch.zeros(3))


def test_derived_generators_are_pure_functions_of_their_path():
    def draw(*args):
        return tuple(torch.randint(0, 2**31, (4,), generator=derive_generator(*args)).tolist())

    assert draw(1, "order", 5) == draw(1, "order", 5)
    paths = [(1, "order", 5), (1, "order", 6), (1, "augment", 5), (2, "order", 5), (1, "order", 5, 0), (1, "order")]
    assert len({draw(*p) for p in paths}) == len(paths)
