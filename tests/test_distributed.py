"""`--engine ray`: extract and label on a local Ray cluster give the local engine's files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import make_config, write_images
from test_label import _fresh, _read, labelled_run  # noqa: F401  (a fixture)

from introspect.engine import distributed, stream
from introspect.stages import extract

ray = pytest.importorskip("ray", reason="the distributed extra (Ray Data) is not installed")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    rel = write_images(root, 150, seed=4)
    lines = rel[:40] + ["missing.jpg", ""] + rel[40:]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in lines))
    return lst, root


def _files(out, kinds=("full", "subset")):
    got = {}
    for kind in kinds:
        with h5py.File(out / f"{kind}.h5") as f:
            got[kind] = {k: f[k][:] for k in f if k != "failures"}
            got[kind]["failures"] = [
                (int(i), p.decode(), r.decode())
                for i, p, r in zip(f["failures/index"][:], f["failures/path"][:], f["failures/reason"][:])
            ]
    return got


def _same(a, b):
    assert a.keys() == b.keys()
    for kind in a:
        assert a[kind].keys() == b[kind].keys()
        for k in a[kind]:
            if k in ("index", "failures"):
                assert np.array_equal(a[kind][k], b[kind][k]) if k == "index" else a[kind][k] == b[kind][k]
            else:  # the same session on the same pixels, batched differently
                np.testing.assert_allclose(a[kind][k], b[kind][k], rtol=0, atol=1e-5)


def test_ray_extract_equals_local(cluster, data, tmp_path, tiny_model):
    lst, root = data
    local = make_config(lst, root, tiny_model, tmp_path / "local")
    extract.run(local, progress=False)
    cfg = make_config(lst, root, tiny_model, tmp_path / "ray", engine="ray")
    s = extract.run(cfg, progress=False)
    assert s.images == 150 and s.failures == 2
    _same(_files(tmp_path / "ray"), _files(tmp_path / "local"))


def test_ray_extract_subset_only_and_shards(cluster, data, tmp_path, tiny_model):
    lst, root = data
    local = make_config(lst, root, tiny_model, tmp_path / "local", full=False)
    extract.run(local, progress=False)
    cfg = make_config(lst, root, tiny_model, tmp_path / "ray", full=False, engine="ray")
    for i in range(2):
        extract.run(cfg, stream.Shard(i, 2), progress=False)
    extract.join(tmp_path / "ray")
    _same(_files(tmp_path / "ray", ("subset",)), _files(tmp_path / "local", ("subset",)))


def test_killed_ray_run_resumes_from_its_chunks(cluster, data, tmp_path, tiny_model, monkeypatch):
    lst, root = data
    cfg = make_config(lst, root, tiny_model, tmp_path / "ray", engine="ray")
    real, written = distributed._record, []

    class Crash(Exception):
        pass

    def write(chunk, *args):
        if len(written) == 2:
            raise Crash
        written.append(chunk.id)
        return real(chunk, *args)

    with monkeypatch.context() as m:
        m.setattr(distributed, "_record", write)
        with pytest.raises(Crash):
            extract.run(cfg, progress=False)
    s = extract.run(cfg, progress=False)
    got = _files(tmp_path / "ray")
    # only the chunks that had no part yet went through the net again
    assert s.resumed_chunks == 2 and s.processed == int(np.sum(~np.isin(got["full"]["index"] // 32, written)))
    local = make_config(lst, root, tiny_model, tmp_path / "local")
    extract.run(local, progress=False)
    _same(got, _files(tmp_path / "local"))


def test_ray_label_equals_local(cluster, labelled_run, tmp_path):  # noqa: F811  (the fixture)
    from introspect.stages import label

    base, lines = labelled_run
    local = _fresh(base, tmp_path / "local")
    local["label"]["fast"] = False
    one = _read(label.run(local, progress=False).labels)
    cfg = _fresh(base, tmp_path / "ray")
    cfg["label"]["fast"] = False
    cfg["extract"]["engine"] = "ray"
    result = label.run(cfg, progress=False)
    got = _read(result.labels)
    assert np.array_equal(got["index"], one["index"]) and np.array_equal(got["label"], one["label"])
    np.testing.assert_allclose(got["score"], one["score"], atol=1e-6)
    assert got["failures"] == one["failures"]
    for k in ("clusters", "distribution.csv"):  # the lists follow from labels.h5 as locally
        assert (tmp_path / "ray" / "run" / k).exists()


def test_unreachable_cluster_is_one_line(data, tmp_path, tiny_model, capsys):
    from introspect import cli

    lst, root = data
    was = ray.is_initialized()
    if was:
        ray.shutdown()
    try:
        code = cli.main(
            [
                "extract",
                "-q",
                "--list",
                str(lst),
                "--root",
                str(root),
                "--model",
                str(tiny_model),
                "--out",
                str(tmp_path / "out"),
                "--engine",
                "ray",
                "--address",
                "127.0.0.1:1",
            ]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "Ray cluster" in err[0]
    finally:
        if was:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
