"""`--engine ray` on a cluster of three nodes on this machine (a head and two workers) that loses a worker
mid-run: the job finishes and its files equal a single-process run's."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_config, write_images
from test_distributed import _files, _same
from test_label import _fresh, _read, labelled_run  # noqa: F401  (a fixture)

from introspect.engine import distributed
from introspect.stages import extract, label

ray = pytest.importorskip("ray", reason="the distributed extra (Ray Data) is not installed")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def nodes():
    """A head where only the driver runs (no CPU to schedule on) and two worker nodes of two CPUs: every task
    and inference actor runs on a worker, so losing one loses work in flight."""
    if ray.is_initialized():
        ray.shutdown()
    c = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def _actor_node() -> str | None:
    """The node of a live inference actor (Ray Data fuses decoding into it), from the GCS's actor table."""
    try:
        from ray._private import state

        for a in state.actors().values():
            if a["State"] == "ALIVE" and "Infer" in (a.get("ActorClassName") or ""):
                return a["Address"]["NodeID"]
    except Exception:  # a private table: without it, any worker node still holds tasks in flight
        return None
    return None


def _lose_a_node_after_first_chunk(monkeypatch, c, workers) -> list[int]:
    """Remove the worker node running the net as soon as the driver has written the first chunk."""
    real, written = distributed._record, []

    def record(chunk, *args):
        written.append(chunk.id)
        if len(written) == 1:
            live = [w for w in workers if w in c.worker_nodes]
            busy = _actor_node()
            node = next((w for w in live if w.node_id == busy), live[0])
            c.remove_node(node)  # its raylet and workers die, as when a machine goes away
        return real(chunk, *args)

    monkeypatch.setattr(distributed, "_record", record)
    return written


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    rel = write_images(root, 240, seed=5)
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in rel[:100] + ["missing.jpg"] + rel[100:]))
    return lst, root


@pytest.mark.timeout(300)  # a hang is a failure
def test_extract_survives_losing_a_node(nodes, data, tmp_path, tiny_model, monkeypatch):
    c, workers = nodes
    lst, root = data
    cfg = make_config(lst, root, tiny_model, tmp_path / "ray", engine="ray", address=c.address, chunk_size=8)
    written = _lose_a_node_after_first_chunk(monkeypatch, c, workers)
    s = extract.run(cfg, progress=False)
    assert len(c.worker_nodes) == len(workers) - 1 and len(written) > 1  # it ran on after the loss
    assert s.images == 240 and s.failures == 1
    local = make_config(lst, root, tiny_model, tmp_path / "local", chunk_size=8)
    extract.run(local, progress=False)
    _same(_files(tmp_path / "ray"), _files(tmp_path / "local"))


@pytest.mark.timeout(300)
def test_label_survives_losing_a_node(nodes, labelled_run, tmp_path, monkeypatch):  # noqa: F811  (the fixture)
    c, workers = nodes
    base, _ = labelled_run
    local = _fresh(base, tmp_path / "local")
    local["label"]["fast"] = False
    local["extract"]["chunk_size"] = 8
    one = _read(label.run(local, progress=False).labels)
    cfg = _fresh(base, tmp_path / "ray")
    cfg["label"]["fast"] = False
    cfg["extract"].update(engine="ray", address=c.address, chunk_size=8)
    if len(c.worker_nodes) < len(workers):  # the extract test took one: a fresh worker to lose
        workers.append(c.add_node(num_cpus=2))
        c.wait_for_nodes()
    written = _lose_a_node_after_first_chunk(monkeypatch, c, workers)
    got = _read(label.run(cfg, progress=False).labels)
    assert len(written) > 1
    assert np.array_equal(got["index"], one["index"]) and np.array_equal(got["label"], one["label"])
    np.testing.assert_allclose(got["score"], one["score"], atol=1e-6)
    assert got["failures"] == one["failures"]
