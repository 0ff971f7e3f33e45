"""Same-person neighbours among all rows, near-duplicates, identity removed, people per cluster (issue 17)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from introspect.science import discovery, identity


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faces(people: int, per: int, d: int = 64, photo: float = 0.8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, identity): per person a centre on the sphere, each photo its centre + noise.

    Two photos of one person have cosine near 1 / (1 + photo^2) (0.61), two people near 0."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(people, d)))
    ids = np.repeat(np.arange(people), per)
    return unit(centres[ids] + photo * rng.normal(size=(len(ids), d)) / np.sqrt(d)), ids


def copies(E: np.ndarray, n: int, noise: float = 0.1, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, source row): each row `n` times, re-encoded / overlaid (a little noise)."""
    rng = np.random.default_rng(seed)
    src = np.repeat(np.arange(len(E)), n)
    return unit(E[src] + noise * rng.normal(size=(len(src), E.shape[1])) / np.sqrt(E.shape[1])), src


def test_impostor_line_is_not_moved_by_the_same_person_pairs_among_random_pairs():
    alone, _ = faces(2000, 1, seed=2)  # every row another person: random pairs are all impostors
    many, _ = faces(40, 50, seed=2)  # 2.5 % of random pairs are one person
    truth, fit = identity.fit_impostors(alone), identity.fit_impostors(many)
    assert abs(fit.line(2000) - truth.line(2000)) < 0.03
    U = unit(many)
    c = (U @ U.T)[np.triu_indices(len(U), 1)]
    assert np.quantile(c, 1 - 0.1 / 2000) > truth.line(2000) + 0.1  # what a plain quantile would say
    assert fit.line(10**7) > fit.line(2000)  # more rows searched: a stricter line


def test_a_row_is_never_its_own_neighbour_and_finds_its_person_among_all_rows():
    E, ids = faces(400, 5)
    q = np.arange(0, len(E), 7)  # a subset; its rows are among all
    nb = identity.same_person_neighbours(E[q], q, E, k=10, method="exact")
    assert nb.method == "exact" and nb.index.shape == (len(q), 10)
    assert not (nb.index == q[:, None]).any()
    found = nb.index >= 0
    assert (ids[nb.index[found]] == np.repeat(ids[q], found.sum(axis=1))).mean() > 0.97  # 0.1 chance match a row
    assert nb.count.mean() > 3.8  # of 4 other photos each
    assert (nb.duplicates == 0).all()  # the row itself is not counted as its own copy either
    c = nb.cosine[:, :4]
    assert (np.diff(c, axis=1)[~np.isnan(np.diff(c, axis=1))] <= 0).all()


def test_exact_and_annoy_search_agree_on_a_planted_set():
    E, ids = faces(1000, 4, seed=3)
    q = np.arange(0, len(E), 9)
    exact = identity.same_person_neighbours(E[q], q, E, k=8, method="exact")
    approx = identity.same_person_neighbours(E[q], q, E, k=8, method="annoy")
    assert approx.method == identity.same_person_neighbours(E[:2], q[:2], E, max_pairs=1).method == "annoy"
    pairs = lambda nb: {(i, j) for i, row in enumerate(nb.index) for j in row if j >= 0}  # noqa: E731
    a, b = pairs(exact), pairs(approx)
    assert len(a) > 2.5 * len(q) and len(a & b) >= 0.95 * len(a) and len(b - a) <= 0.02 * len(a)
    assert not (approx.index == q[:, None]).any()


def test_search_and_removal_read_h5py_datasets(tmp_path):
    E, _ = faces(300, 4, seed=4)
    F = np.random.default_rng(5).normal(size=(len(E), 6)).astype(np.float32)
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["facen"], f["prefacen_mean"] = E, F
    q = np.array([5, 3, 900, 17])  # unsorted on purpose
    ref = identity.same_person_neighbours(E[q], q, E, k=5, method="exact")
    with h5py.File(tmp_path / "full.h5", "r") as f:
        nb = identity.same_person_neighbours(E[q], q, f["facen"], k=5, method="exact")
        out = identity.remove_identity(F[q], nb, f["prefacen_mean"], chunk=3)
    np.testing.assert_array_equal(nb.index, ref.index)
    want = np.stack([F[i] - F[row[row >= 0]].mean(axis=0) for i, row in zip(q, nb.index)])
    np.testing.assert_allclose(out.features, want, rtol=1e-5, atol=1e-6)
    assert out.mask.all() and out.skipped is None


def test_a_set_made_only_of_near_duplicates_gets_no_identity_removed_view():
    one, _ = faces(200, 1, seed=6)  # 200 people, one photo each
    E, src = copies(one, 8)  # ... each photo 8 times (re-encoded, overlaid)
    F = np.random.default_rng(7).normal(size=(len(E), 5))
    q = np.arange(0, len(E), 3)
    nb = identity.same_person_neighbours(E[q], q, E, k=10)
    out = identity.remove_identity(F[q], nb, F)
    assert (nb.duplicates == 7).mean() > 0.95  # the copies were seen, and set aside as the same photo
    assert out.share < 0.05 and out.skipped and "too few rows with same-person neighbours" in out.skipped
    assert np.isnan(out.features[~out.mask]).all()


def test_strong_overlays_need_the_photo_to_be_told_from_other_photos():
    one, _ = faces(150, 1, seed=14)
    E, src = copies(one, 6, noise=0.8)  # overlays as strong as another photo (a mask): below the duplicate line
    F = np.zeros((len(E), 2))
    q = np.arange(0, len(E), 4)
    by_embedding = identity.same_person_neighbours(E[q], q, E, k=10)
    assert identity.remove_identity(F[q], by_embedding, F).skipped is None  # the limit: they pass as other photos
    for method in ("exact", "annoy"):
        nb = identity.same_person_neighbours(E[q], q, E, k=10, method=method, photo=src)
        out = identity.remove_identity(F[q], nb, F)
        assert out.skipped and out.share < 0.05 and nb.duplicates.mean() > 4


def test_copies_do_not_crowd_out_the_persons_other_photos():
    photos, ids = faces(100, 4, seed=8)  # 4 different photos per person
    E, src = copies(photos, 5, seed=9)  # ... each 5 times
    person = ids[src]
    q = np.arange(0, len(E), 5)
    for method in ("exact", "annoy"):
        nb = identity.same_person_neighbours(E[q], q, E, k=5, method=method)
        got = nb.index >= 0
        assert nb.count.mean() > 4.8 and (nb.duplicates == 4).mean() > 0.95
        assert (src[nb.index[got]] != np.repeat(src[q], got.sum(axis=1))).all()  # never a copy of its own photo
        assert (person[nb.index[got]] == np.repeat(person[q], got.sum(axis=1))).mean() > 0.99
        out = identity.remove_identity(np.zeros((len(q), 2)), nb, np.zeros((len(E), 2)))
        assert out.skipped is None and out.share > 0.95


def test_rows_without_another_photo_are_masked():
    E, _ = faces(100, 3, seed=10)
    loner = unit(np.random.default_rng(11).normal(size=(1, E.shape[1])))  # a person with one photo
    E = np.concatenate([E, loner])
    q = np.array([0, len(E) - 1])
    nb = identity.same_person_neighbours(E[q], q, E, k=4)
    out = identity.remove_identity(np.ones((2, 3)), nb, np.ones((len(E), 3)), min_share=0.4)
    assert out.mask.tolist() == [True, False] and out.share == 0.5 and out.skipped is None
    np.testing.assert_allclose(out.features[0], 0.0)
    assert identity.remove_identity(np.ones((2, 3)), nb, np.ones((len(E), 3)), min_share=0.6).skipped


def _clusters(shift: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """300 people x 10 photos; 10 % of photos carry an attribute that moves the embedding by `shift`.

    Labels: 0 = one person, 1 = three people, 2 = the attribute's photos of everyone else, 3 = the rest."""
    E, ids = faces(300, 10, seed=12)
    rng = np.random.default_rng(13)
    attr = rng.random(len(E)) < 0.1
    E = unit(E + shift * attr[:, None] * unit(rng.normal(size=(1, E.shape[1]))))
    labels = np.full(len(E), 3)
    labels[attr] = 2
    labels[ids == 0] = 0
    labels[np.isin(ids, [1, 2, 3])] = 1
    return E, ids, labels


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_identity_flag_counts_people_not_similar_pairs(shift):
    E, ids, labels = _clusters(shift)
    flags = identity.identity_flags(E, labels)
    assert len(np.unique(ids[labels == 2])) > 30
    assert [f["flagged"] for f in flags] == [True, True, False, False]
    assert flags[0]["people"] == 1 and flags[1]["people"] == 3 and flags[2]["people"] > 30
    assert flags[1]["largest_share"] == pytest.approx(1 / 3)
    if shift:  # the attribute lifts every member pair: the pair share flags it, the people count does not
        _, pairs = discovery.same_person_pairs(E, labels)
        assert pairs[2]["same_person_pairs"] >= discovery.SAME_PERSON_PAIRS


def test_the_stability_rule_fits_single_threaded(monkeypatch):
    seen = []
    fit = discovery.Partition.fit

    def spy(self, Z, y=None):
        seen.append(max(p["num_threads"] for p in threadpool_info()))
        return fit(self, Z, y)

    monkeypatch.setattr(discovery.Partition, "fit", spy)
    X = np.random.default_rng(0).normal(size=(200, 4))
    discovery.select_k(X, ks=(2, 3), n_boot=2, extend=0)
    assert seen and max(seen) == 1


def test_copies_are_told_from_other_photos_by_the_activations_not_the_embedding():
    """Embeddings alike either way (a recognition net makes a person's photos alike); activations differ."""
    rng = np.random.default_rng(3)
    people, photos, d = 40, 4, 24
    person = np.repeat(np.arange(people), photos)
    E = rng.normal(0, 1, (people, 128))[person] + 0.05 * rng.normal(0, 1, (len(person), 128))  # cosine ~0.998
    base = rng.normal(0, 5, (people, d))[person]
    other = base + rng.normal(0, 2, (len(person), d))  # other photos: pose and light move the activations
    first = np.arange(len(person)) - np.arange(len(person)) % photos
    copies = other[first] + rng.normal(0, 0.05, (len(person), d))  # one photo re-encoded
    rows = np.arange(len(person))
    for F, expect_kept in ((other, True), (copies, False)):
        found = identity.same_person_neighbours(E, rows, E, k=8, duplicate=np.inf)
        same = lambda nb: ((nb.index >= 0) & (person[np.maximum(nb.index, 0)] == person[:, None])).sum(axis=1)
        assert (same(found) == photos - 1).all()  # by the embedding alone, all are the person's photos
        kept = identity.drop_copies(found, F, F, F, k=5)
        assert kept.index.shape == (len(person), 5)
        if expect_kept:
            assert (same(kept) == photos - 1).all()
        else:
            assert (same(kept) == 0).all() and kept.duplicates.sum() >= len(person) * (photos - 1)


def test_the_report_reads_the_keys_the_cluster_stage_writes():
    """The report's identity cells from rows exactly as `identity_flags` writes them (no key it never writes)."""
    from introspect.stages import report_html, report_run

    E, ids, labels = _clusters(0.0)
    flagged = report_run.identity_flags({"identity": identity.identity_flags(E, labels)})
    assert sorted(flagged) == [0, 1]
    assert report_html.identity_text(flagged[0]) == "1 person; the largest holds 100%; the 3 largest hold 100%"
    assert report_html.identity_text(flagged[1]).startswith("3 people; the largest holds 33%")
    assert report_html.identity_short(flagged[1]) == "yes (3 people)"


def test_a_few_different_people_are_not_flagged_for_being_few_members():
    """Singletons dominate nothing: 6 different people (3 of 6 would be half), or 8 where two photos are
    one person (a chance match makes the same: 4 of 8), are not "mostly one or a few people"; 6 photos of
    one person with 2 strangers are."""
    E, ids = faces(200, 10, seed=21)
    first = np.array([np.flatnonzero(ids == p)[0] for p in range(200)])
    six = first[:6]
    pair = np.concatenate([np.flatnonzero(ids == 6)[:2], first[7:13]])
    one = np.concatenate([np.flatnonzero(ids == 13)[:6], first[14:16]])
    rest = np.setdiff1d(np.arange(len(E)), np.concatenate([six, pair, one]))
    order = np.concatenate([six, pair, one, rest])
    labels = np.repeat([0, 1, 2, 3], [len(six), len(pair), len(one), len(rest)])
    flags = identity.identity_flags(E[order], labels, impostors=identity.fit_impostors(E))
    assert [f["people"] for f in flags[:3]] == [6, 7, 3]
    assert [f["flagged"] for f in flags] == [False, False, True, False]
    assert flags[1]["top_share"] == pytest.approx(2 / 8) and flags[2]["top_share"] == pytest.approx(6 / 8)
