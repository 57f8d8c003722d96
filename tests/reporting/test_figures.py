"""The evaluation's figures as a reader sees them: rounded numbers, named branch and lines, nothing clipped,
no title over another; and the PNG files they are saved to."""

import re

import numpy as np
import pytest
from matplotlib.text import Text
from PIL import Image

from mediclip_monai.reporting.figures import montage_figure, overlay_montage, plot_roc, roc_figure


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def drawn_texts(figure):
    """Every visible text of a drawn figure but the tick labels, each once, with its extent on the canvas."""
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    ticks = {id(label) for axes in figure.get_axes() for label in axes.get_xticklabels() + axes.get_yticklabels()}
    texts = {id(t): t for t in figure.findobj(Text) if id(t) not in ticks}.values()
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text().strip()]


def assert_inside(figure):
    """Nothing drawn reaches past the figure's edges (what savefig would cut off)."""
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    tight, page = figure.get_tightbbox(renderer), figure.bbox_inches
    assert tight.x0 >= page.x0 - 1e-6 and tight.y0 >= page.y0 - 1e-6, (tight, page)
    assert tight.x1 <= page.x1 + 1e-6 and tight.y1 <= page.y1 + 1e-6, (tight, page)
    for text, extent in drawn_texts(figure):
        assert extent.x0 >= 0 and extent.x1 <= figure.bbox.x1 and extent.y0 >= 0 and extent.y1 <= figure.bbox.y1, text


def test_roc_names_what_it_shows_and_rounds_the_auroc(rng):
    labels = np.array([0, 1] * 11)
    scores = rng.random(22) + 0.2 * labels
    figure = roc_figure(labels, scores, title="Image-level ROC, fused map, 22 cases")
    texts = [text for text, _ in drawn_texts(figure)]
    assert "Image-level ROC, fused map, 22 cases" in texts
    (auroc,) = [text for text in texts if text.startswith("AUROC")]
    assert re.fullmatch(r"AUROC \d\.\d{3}", auroc)
    assert not [text for text in texts if re.search(r"\d\.\d{4}", text)]  # no unrounded number anywhere
    assert_inside(figure)


def volume_case(rng, name, truth=1):
    label = np.zeros((40, 40))
    label[10:20, 12:18] = 1
    slices = [
        {
            "image": rng.random((40, 40)),
            "anomaly_map": rng.random((40, 40)),
            "label": label,
            "title": f"slice {k} ({w})",
        }
        for k, w in ((42, "most truth"), (28, "of the score"))
    ]
    return {"name": name, "score": 0.18436, "decision": "abnormal", "truth": truth, "slices": slices}


def picture_case(rng, name, label=None):
    return {
        "name": name,
        "score": 0.13,
        "decision": "normal",
        "truth": 0,
        "image": rng.random((32, 32)),
        "anomaly_map": rng.random((32, 32)),
        "label": label,
    }


def test_montage_rows_headed_in_full_lines_and_branch_named_nothing_clipped_or_overlapping(rng):
    long_name = "site_04_subject_0012_T1w_postcontrast_axial_brain_test_003"
    cases = [volume_case(rng, long_name), picture_case(rng, "brain_test_018")]
    figure = montage_figure(cases, threshold=0.10329373180866241, branch="fused")
    texts = drawn_texts(figure)
    words = [text for text, _ in texts]
    # The row heading: the whole name, the score rounded, the decision and the truth in words.
    assert f"{long_name}: score 0.184, decision abnormal, truth abnormal" in words
    assert "brain_test_018: score 0.130, decision normal, truth normal" in words
    # The lines are named once, in the legend; the threshold rounded; the map panels name the branch.
    assert "truth (given mask)" in words and "mask threshold 0.103" in words
    assert words.count("fused map") == 3
    assert "slice 42 (most truth)" in words and "slice 28 (of the score)" in words and "image, no mask given" in words
    assert not [w for w in words if re.search(r"\d\.\d{4}", w)]
    assert_inside(figure)
    # No title runs into another (the two map titles of a volume row used to overlap).
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            assert not box_a.overlaps(box_b), (a, b)


def png_size(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_figures_are_saved_as_pngs_one_montage_row_per_case(tmp_path, rng):
    labels = rng.integers(0, 2, 30)
    path = plot_roc(tmp_path / "eval" / "roc.png", labels, rng.random(30) + 0.3 * labels)
    width, height = png_size(path)
    assert width >= 300 and height >= 300
    assert sorted(p.name for p in path.parent.iterdir()) == ["roc.png"]  # no temp file left
    png_size(plot_roc(tmp_path / "one.png", np.zeros(5), rng.random(5)))  # one class only: a figure, not a crash

    label = np.zeros((32, 32))
    label[10:20, 12:18] = 1
    one = overlay_montage(tmp_path / "one_row.png", [picture_case(rng, "a", label)])
    three = overlay_montage(
        tmp_path / "three.png", [picture_case(rng, "a", label), picture_case(rng, "b"), picture_case(rng, "c", label)]
    )
    (width1, height1), (width3, height3) = png_size(one), png_size(three)
    assert width1 >= 600 and height1 >= 300
    assert width3 == width1 and height3 == pytest.approx(3 * height1, rel=0.15)
    with pytest.raises(ValueError):
        overlay_montage(tmp_path / "none.png", [])
