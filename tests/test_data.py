"""Data sets: tiny files in the real formats (CIFAR-10 python batches, enwik8 bytes)."""

import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest

from isometry import data as D


def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"x"}


def _write_cifar_folder(root, n=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {name: _cifar_batch(n, i) for i, name in enumerate(D.CIFAR10_FILES)}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder, batches


def test_cifar10_folder_and_archive_agree(tmp_path):
    folder, batches = _write_cifar_folder(tmp_path)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    a, b = D.load_cifar10(str(tmp_path)), D.load_cifar10(str(archive))
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert a.task == D.Task("classification", (32, 32, 3), 10)
    assert a.train_x.shape == (30, 32, 32, 3) and a.test_x.shape == (6, 32, 32, 3)
    # row layout: 1024 red, then green, then blue values, row-major 32x32 each
    raw = batches["data_batch_1"][b"data"][0]
    assert a.train_x[0, 0, 1, 2] == raw[2 * 1024 + 1]
    np.testing.assert_array_equal(a.test_y, batches["test_batch"][b"labels"])
    x, _ = a.train_batch(0, 0, 4)
    assert x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0


def test_cifar10_env_variable_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(D.CIFAR10_ENV, raising=False)
    with pytest.raises(D.DataError, match="ISOMETRY_CIFAR10"):
        D.load_data("cifar10")
    with pytest.raises(D.DataError, match="not found at"):
        D.load_cifar10(str(tmp_path / "nope.tar.gz"))
    folder, _ = _write_cifar_folder(tmp_path)
    monkeypatch.setenv(D.CIFAR10_ENV, str(folder))
    assert D.load_data("cifar10").examples_per_epoch == 30
    (folder / "test_batch").write_bytes(b"garbage, not a pickle")
    with pytest.raises(D.DataError, match="test_batch is not a CIFAR-10 python batch"):
        D.load_cifar10(str(folder))
    os.remove(folder / "data_batch_3")
    with pytest.raises(D.DataError, match="no data_batch_3"):
        D.load_cifar10(str(folder))
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(D.DataError, match="unreadable"):
        D.load_cifar10(str(bad))


def test_training_order_is_a_function_of_seed_and_step():
    rng = np.random.default_rng(0)
    n = 10
    ds = D.ImageClassification("t", rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8),
                               np.arange(n), np.zeros((2, 2, 2, 3), np.uint8), np.zeros(2))
    labels = np.concatenate([ds.train_batch(3, s, 4)[1] for s in range(5)])  # 20 = 2 epochs
    assert sorted(labels[:10]) == list(range(n)) and sorted(labels[10:]) == list(range(n))
    assert not np.array_equal(labels[:10], labels[10:])  # each epoch reshuffled
    fresh = D.ImageClassification("t", ds.train_x, ds.train_y, ds.test_x, ds.test_y)
    np.testing.assert_array_equal(fresh.train_batch(3, 3, 4)[1], labels[12:16])
    assert not np.array_equal(ds.train_batch(4, 0, 10)[1], labels[:10])


def test_enwik8_split_windows_and_zip(tmp_path, monkeypatch):
    # a short file that starts as enwik8 does (its XML header), the rest printable bytes
    text = D.ENWIK8_START + bytes(np.random.default_rng(1).integers(32, 127, 2000 - 11,
                                                                    dtype=np.uint8))
    raw = tmp_path / "enwik8"
    raw.write_bytes(text)
    monkeypatch.setenv(D.ENWIK8_ENV, str(raw))
    with pytest.warns(UserWarning, match="2,000 bytes, not 100,000,000"):
        ds = D.load_data("enwik8", seq_len=16)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1800, 100, 100)
    assert ds.task == D.Task("language_model", (16,), 256)
    x, y = ds.train_batch(0, 7, 5)
    assert x.shape == y.shape == (5, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
    np.testing.assert_array_equal(x, ds.train_batch(0, 7, 5)[0])
    (vx, vy), = list(ds.eval_batches(100, 1))
    assert vx.shape == (6, 16) and bytes(vx[0].astype(np.uint8)) == text[1800:1816]
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as z:
        z.writestr("enwik8", text)
    with pytest.warns(UserWarning, match="part of enwik8"):
        zipped = D.load_data("enwik8", path=str(tmp_path / "enwik8.zip"), seq_len=16)
    np.testing.assert_array_equal(zipped.test, ds.test)
    (tmp_path / "tiny").write_bytes(b"abc" * 10)
    with pytest.raises(D.DataError, match="shorter --seq-len"):
        D.load_data(f"text:{tmp_path / 'tiny'}", seq_len=16)
    with pytest.raises(D.DataError, match="text file not found"):
        D.load_data(f"text:{tmp_path / 'missing.txt'}")


def test_synthetic_task_is_deterministic_and_learnable_signal():
    ds = D.load_data("synthetic:4x4x3")
    assert ds.task == D.Task("classification", (4, 4, 3), 10)
    x, y = ds.train_batch(0, 5, 512)
    np.testing.assert_array_equal(x, ds.train_batch(0, 5, 512)[0])
    # nearest-prototype classification beats chance by far, but is not perfect
    d = ((x[:, None] - ds.prototypes[None]) ** 2).reshape(512, 10, -1).sum(-1)
    acc = np.mean(np.argmin(d, axis=1) == y)
    assert 0.3 < acc < 0.99, acc
    with pytest.raises(D.DataError, match="unknown data"):
        D.load_data("mnist")


def test_a_file_that_is_not_enwik8_is_refused(tmp_path):
    (tmp_path / "enwik8").write_bytes(b"just some other text\n" * 1000)
    with pytest.raises(D.DataError, match="is not enwik8.*text:PATH"):
        D.load_data("enwik8", path=str(tmp_path / "enwik8"), seq_len=8)


@pytest.mark.parametrize("tokens", [np.array([3, -5, 7] * 100), np.array([3, 256, 7] * 100),
                                    np.zeros((10, 30), np.int64), np.full(300, 0.5)])
def test_byte_tokens_outside_0_to_255_are_refused(tokens):
    with pytest.raises(D.DataError, match="byte values 0..255"):
        D.ByteCorpus("tokens", tokens, seq_len=4)
