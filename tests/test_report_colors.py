"""The report's colours: 40 clusters get 40 colours the eye tells apart, none of them the grey that
means noise or the colours of the map's overlays; a long panel title stays inside its figure."""

from __future__ import annotations

import numpy as np

from introspect.stages import report, report_colors
from introspect.stages.report_colors import LABELLED_COLOR, NOISE_COLOR, RESERVED, SECOND_COLOR, color, lab_of
from introspect.stages.report_media import compare_figure


def _closest(colors) -> float:
    lab = lab_of(colors)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=2)
    return float(d[~np.eye(len(colors), dtype=bool)].min())


def test_forty_clusters_get_forty_distinct_colours():
    forty = [color(k) for k in range(40)]
    assert len(set(forty)) == 40
    assert _closest(forty) >= 0.08  # OKLab; a just-noticeable difference is about 0.02
    away = np.linalg.norm(lab_of(forty)[:, None] - lab_of(RESERVED)[None], axis=2)
    assert away.min() >= 0.08  # not noise grey, the labelled sand, new data's black, the page's white
    assert color(-1) == NOISE_COLOR and color(-7) == NOISE_COLOR
    assert color(0) == "#1f77b4"


def test_the_palette_never_changes_between_runs():
    first = report_colors.palette()
    report_colors.palette.cache_clear()
    assert report_colors.palette() == first and len(first) == report_colors.SIZE
    assert len(set(first)) == report_colors.SIZE


def test_noise_and_the_labelled_overlay_do_not_look_alike():
    assert _closest([NOISE_COLOR, LABELLED_COLOR, SECOND_COLOR]) >= 0.15
    both = report._map_words(np.zeros((3, 2)), np.zeros((2, 2)))
    assert "grey points are noise" in both and "Pale sand" in both and "Black dots" in both
    alone = report._map_words(None, None)
    assert "grey points are noise" in alone and "Pale sand" not in alone and "Black" not in alone


def test_a_long_panel_title_stays_inside_its_figure():
    title = "clustering (kmeans in the whitened PCA space (50 components), k chosen by stability (at the grid's edge))"
    rng = np.random.default_rng(0)
    Y, c = rng.normal(size=(50, 2)), rng.integers(-1, 40, 50)
    fig = compare_figure(Y, [(title, c), ("classifier on the activations", c)])
    fig.canvas.draw()
    box = fig.bbox
    for ax in fig.axes:
        t = ax.title.get_window_extent()
        assert box.x0 <= t.x0 and t.x1 <= box.x1 and t.y1 <= box.y1, ax.title.get_text()
