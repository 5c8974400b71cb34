"""Tests for pneumoscope.report and pneumoscope.evaluation.plots."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscope.evaluation.metrics import compute_metrics
from pneumoscope.evaluation.plots import save_evaluation_plots
from pneumoscope.report import (
    DISCLAIMER,
    GALLERY_CELL_PX,
    GALLERY_HEADER_PX,
    GROUPS,
    GalleryTile,
    assign_groups,
    render_gallery,
    select_gallery,
    write_report,
)

MALICIOUS = "<script>alert(1)</script>"

# Crafted case at threshold 0.5: 5 TN, 5 TP, 4 FP and only 2 FN, in shuffled index order.
_CASES = [
    # (index-order entries) group, true label, prob
    ("TN", 0, 0.30),  # 0
    ("TP", 1, 0.95),  # 1
    ("FN", 1, 0.40),  # 2
    ("FP", 0, 0.52),  # 3
    ("TN", 0, 0.05),  # 4
    ("TP", 1, 0.55),  # 5
    ("FP", 0, 0.97),  # 6
    ("TN", 0, 0.45),  # 7
    ("TP", 1, 0.99),  # 8
    ("FP", 0, 0.70),  # 9
    ("TN", 0, 0.10),  # 10
    ("FN", 1, 0.02),  # 11
    ("TP", 1, 0.80),  # 12
    ("FP", 0, 0.90),  # 13
    ("TN", 0, 0.20),  # 14
    ("TP", 1, 0.60),  # 15
]
Y = np.array([c[1] for c in _CASES])
P = np.array([c[2] for c in _CASES])


def test_assign_groups_matches_crafted_case() -> None:
    assert assign_groups(Y, P, 0.5).tolist() == [c[0] for c in _CASES]


def test_select_gallery_ranking_and_fill() -> None:
    sel = select_gallery(Y, P, 0.5, per_group=3, total=12)
    assert sel == [
        ("TN", 4), ("TN", 10), ("TN", 14),  # most confident NORMAL: p 0.05, 0.10, 0.20
        ("TP", 8), ("TP", 1), ("TP", 12),  # most confident PNEUMONIA: p 0.99, 0.95, 0.80
        ("FP", 6), ("FP", 13), ("FP", 9),  # most confidently wrong: p 0.97, 0.90, 0.70
        ("FP", 3),  # fill: not yet chosen and nearest p=0.5 (0.52), labelled with its own group
        ("FN", 11), ("FN", 2),  # only two missed PNEUMONIA: p 0.02 then 0.40
    ]  # fmt: skip
    groups = assign_groups(Y, P, 0.5)
    assert all(groups[i] == g for g, i in sel)
    assert len({i for _, i in sel}) == len(sel)
    # Group order is kept throughout.
    order = [GROUPS.index(g) for g, _ in sel]
    assert order == sorted(order)
    # Deterministic.
    assert select_gallery(Y, P, 0.5, per_group=3, total=12) == sel
    assert select_gallery(list(Y), list(P), 0.5, per_group=3, total=12) == sel


def test_select_gallery_fill_ties_and_limits() -> None:
    # Two more slots: 0.52 (distance 0.02), then 0.45 (TN, index 7) and 0.55 (TP, index 5)
    # tie at 0.05; the lower index wins. Fill-ins are listed after their group's ranked picks.
    sel = select_gallery(Y, P, 0.5, per_group=3, total=13)
    assert [x for x in sel if x[0] == "TN"][-1] == ("TN", 7)
    assert ("TP", 5) not in sel and ("FP", 3) in sel
    # Everything available: all 16 cases, each once.
    assert sorted(i for _, i in select_gallery(Y, P, 0.5, per_group=16, total=64)) == list(range(16))
    # Fewer slots than ranked picks: round-robin by rank keeps every group represented.
    small = select_gallery(Y, P, 0.5, per_group=3, total=9)
    assert len(small) == 9
    assert {g for g, _ in small} == set(GROUPS)
    assert [i for g, i in small if g == "TN"] == [4, 10, 14]
    assert select_gallery(Y, P, 0.5, per_group=0, total=0) == []
    with pytest.raises(ValueError):
        select_gallery(Y, P, 0.5, per_group=-1)


def _tiles(n: int, size: int = 128) -> list[GalleryTile]:
    rng = np.random.default_rng(0)
    sel = select_gallery(Y, P, 0.5, per_group=16, total=64)
    tiles = []
    for k in range(n):
        g, i = sel[k % len(sel)]
        mask = np.zeros((size, size), dtype=bool)
        mask[20:60, 30:90] = True
        tiles.append(
            GalleryTile(
                image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                true_label=int(Y[i]),
                prob=float(P[i]),
                threshold=0.5,
                group=g,
                name=f"{MALICIOUS}_very_long_patient_file_name_{k}.png",
                contour=mask if k % 2 == 0 else None,
            )
        )
    return tiles


def test_render_gallery_grid_size(tmp_path: Path) -> None:
    out = render_gallery(_tiles(10), tmp_path / "g" / "gallery.png", ncols=4)
    with Image.open(out) as im:
        assert im.format == "PNG"
        assert im.size == (4 * GALLERY_CELL_PX[0], GALLERY_HEADER_PX + 3 * GALLERY_CELL_PX[1])


def test_render_gallery_64_tiles(tmp_path: Path) -> None:
    out = render_gallery(_tiles(64), tmp_path / "gallery.png")
    with Image.open(out) as im:
        assert im.size == (8 * GALLERY_CELL_PX[0], GALLERY_HEADER_PX + 8 * GALLERY_CELL_PX[1])


def test_gallery_tile_validation() -> None:
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        GalleryTile(image=img.astype(np.float32), true_label=1, prob=0.9, threshold=0.5, group="TP")
    with pytest.raises(ValueError, match="group"):
        GalleryTile(image=img, true_label=1, prob=0.9, threshold=0.5, group="XX")
    with pytest.raises(ValueError, match="contour"):
        GalleryTile(image=img, true_label=1, prob=0.9, threshold=0.5, group="TP", contour=np.ones((4, 4), bool))
    with pytest.raises(ValueError):
        render_gallery([], "unused.png")


@pytest.mark.parametrize("single_class", [False, True])
def test_save_evaluation_plots(tmp_path: Path, single_class: bool) -> None:
    y = np.ones(6, dtype=int) if single_class else Y
    prob = P[:6] if single_class else P
    paths = save_evaluation_plots(y, prob, 0.5, tmp_path / "plots")
    assert set(paths) == {"confusion_matrix", "roc", "pr"}
    for key, name in (("confusion_matrix", "confusion_matrix.png"), ("roc", "roc.png"), ("pr", "pr.png")):
        assert paths[key] == tmp_path / "plots" / name
        assert paths[key].stat().st_size > 1000
        with Image.open(paths[key]) as im:
            assert im.format == "PNG"


def test_write_report_self_contained_and_escaped(tmp_path: Path) -> None:
    metrics = compute_metrics(Y, P, 0.5)
    plots = save_evaluation_plots(Y, P, 0.5, tmp_path / "plots")
    gallery = render_gallery(_tiles(4), tmp_path / "gallery.png", ncols=4)
    out = write_report(
        tmp_path / "report",
        title=f"Eval {MALICIOUS}",
        metrics=metrics,
        plots=plots,
        gallery=gallery,
        sections=[("Notes " + MALICIOUS, "<p id='trusted'>trusted <b>fragment</b></p>")],
        run_info={MALICIOUS: MALICIOUS, "seed": 7, "files": [MALICIOUS]},
        credit=f"Credit: {MALICIOUS}",
    )
    assert out == tmp_path / "report" / "report.html"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # one file, no temp left
    text = out.read_text(encoding="utf-8")

    # Images embedded, valid PNG payloads: 3 plots + gallery.
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == 4
    assert all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    assert 'src="/' not in text and "file://" not in text

    assert "not a diagnosis" in text and DISCLAIMER.split(".")[0] in text
    assert f"{metrics['accuracy']:.4f}" in text
    assert f"{metrics['roc_auc']:.4f}" in text
    assert f"{metrics['sensitivity']:.4f}" in text and f"{metrics['specificity']:.4f}" in text
    assert "Credit:" in text and "<p id='trusted'>trusted <b>fragment</b></p>" in text

    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_write_report_minimal_with_single_class(tmp_path: Path) -> None:
    y = np.zeros(4, dtype=int)
    prob = np.array([0.1, 0.2, 0.7, 0.3])
    metrics = compute_metrics(y, prob)
    plots = save_evaluation_plots(y, prob, 0.5, tmp_path)
    text = write_report(tmp_path, title="t", metrics=metrics, plots=plots).read_text(encoding="utf-8")
    assert "n/a" in text  # None AUCs
    assert "only NORMAL" in text  # the metrics warning is shown
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path, title="t", metrics=metrics, plots={"roc": tmp_path / "missing.png"})
