"""Unit tests of the QC reports: page structure, sorting, escaping, pictures and errors."""

from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from deepmir_tasks.io import InputError
from deepmir_tasks.report import render_cohort_report, render_subject_report
from deepmir_tasks.report._images import edges, lesion_tile_picture, load_grid
from deepmir_tasks.report._tables import sort_lesions
from helpers.report import decode_data_png, make_phantom, parse_page


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("phantom"), n_cmb=6, n_iron=4, n_dropped=2)


def _render(p, out, **kw):
    args = dict(participant_id="sub-01", t2=p["t2"], swi=p["swi"], qsm=p["qsm"], mask=p["mask"],
                dseg=p["dseg"], lesions_tsv=p["lesions_tsv"], dropped_tsv=p["dropped_tsv"])
    args.update(kw)
    return render_subject_report(out, **args)


@pytest.fixture(scope="module")
def page(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "sub-01.html"
    inputs = {"T2w": {"file": "sub-01_T2w.nii.gz", "shape": [256, 256, 40], "voxel_size_mm": [0.9, 0.9, 4]}}
    provenance = {"software_version": "0.1.0", "model": "deepmir_default", "model_sha256": "ab" * 32,
                  "parameters": {"threshold": 0.5}, "run_time_s": 75.0}
    path = _render(phantom, out, inputs=inputs, provenance=provenance)
    text = path.read_text()
    return {"path": path, "text": text, "elements": parse_page(text)}


def _tiles(elements, cls="lesion-tile"):
    return [e for e in elements if cls in e.classes]


# ----------------------------------------------------------------------------------------------
# subject page


def test_one_tile_per_lesion_row(page, phantom):
    tiles = _tiles(page["elements"])
    assert len(tiles) == len(phantom["lesions"]) == 10
    assert sorted(int(t.attrs["data-lesion-id"]) for t in tiles) == sorted(phantom["lesions"]["lesion_id"])
    # each tile holds exactly one embedded picture, and it decodes to the four panels
    for tile in tiles:
        imgs = [e for e in page["elements"] if e.tag == "img"
                and any(a.get("data-lesion-id") == tile.attrs["data-lesion-id"] and "lesion-tile" in
                        (a.get("class") or "") for _, a in e.ancestors)]
        assert len(imgs) == 1
        img = decode_data_png(imgs[0].attrs["src"])
        assert img.size[0] > 3 * img.size[1] and img.size[1] >= 64


def test_tiles_sorted_by_label_then_probability(page, phantom):
    tiles = _tiles(page["elements"])
    table = phantom["lesions"].set_index("lesion_id")
    labels = [table.loc[int(t.attrs["data-lesion-id"]), "label"] for t in tiles]
    assert labels == sorted(labels, key=["cmb", "iron"].index)
    assert [t.attrs["data-label"] for t in tiles] == labels
    for lab in ("cmb", "iron"):
        probs = [table.loc[int(t.attrs["data-lesion-id"]), "prob_max"] for t in tiles
                 if t.attrs["data-label"] == lab]
        assert probs == sorted(probs, reverse=True)


def test_sort_lesions_puts_missing_probability_last():
    df = pd.DataFrame({"lesion_id": ["3", "1", "2", "4", "5"], "label": ["iron", "cmb", "cmb", "cmb", "iron"],
                       "prob_max": [0.9, np.nan, 0.6, 0.8, 0.95]})
    out = sort_lesions(df)
    assert list(out["lesion_id"]) == ["4", "2", "1", "5", "3"]


def test_dropped_candidates_in_collapsed_details(page, phantom):
    els = page["elements"]
    details = [e for e in els if e.tag == "details"]
    assert len(details) == 1
    assert "open" not in details[0].attrs  # collapsed
    dropped_tiles = _tiles(els, "dropped-tile")
    assert len(dropped_tiles) == len(phantom["dropped"]) == 2
    assert all(t.inside("details") for t in dropped_tiles)
    assert not any(t.inside("details") for t in _tiles(els))
    assert "negative-qsm" in page["text"]


def test_page_is_self_contained(page):
    text = page["text"]
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    assert "@import" not in text and "url(" not in text
    imgs = [e for e in page["elements"] if e.tag == "img"]
    assert len(imgs) >= 10 + 2 * 7 + 7  # tiles, registration rows, mask row
    for e in imgs:
        im = decode_data_png(e.attrs["src"])
        assert min(im.size) > 0


def test_header_shows_inputs_and_provenance(page):
    text = page["text"]
    for needle in ("sub-01_T2w.nii.gz", "256 × 256 × 40", "0.9, 0.9, 4", "deepmir_default", "ab" * 32,
                   "threshold", "1 min 15 s", "64 × 56 × 40 voxels"):
        assert needle in text, needle


def test_summary_counts_per_class_and_region(page, phantom):
    lesions = phantom["lesions"]
    text = page["text"]
    n_cmb = int((lesions["label"] == "cmb").sum())
    assert re.search(rf'CMB</span></td><td class="num">{n_cmb}</td>', text)
    for region, count in lesions["region"].value_counts().items():
        row = re.search(rf"<tr><td>{region}</td>(.*?)</tr>", text).group(1)
        assert re.findall(r">(\d+)<", row)[-1] == str(count)


def test_page_size_with_ten_lesions(page):
    size = page["path"].stat().st_size
    assert size < 1_500_000, size


def test_values_are_escaped(phantom, tmp_path):
    bad = "<script>alert('x')</script>"
    df = phantom["lesions"].copy()
    df = df.astype({"region": object, "lesion_id": object})
    df.loc[0, "region"] = bad
    df.loc[1, "lesion_id"] = '7" onmouseover="x'
    tsv = tmp_path / "lesions.tsv"
    df.to_csv(tsv, sep="\t", index=False)
    out = _render(phantom, tmp_path / "p.html", lesions_tsv=tsv,
                  provenance={"model": "<b>bold</b>", "parameters": {"<i>": bad}},
                  inputs={"T2w": {"file": "a&b<c>.nii.gz"}})
    text = out.read_text()
    assert "<script" not in text and "<b>bold" not in text and "<i>" not in text
    assert "&lt;script&gt;" in text and "a&amp;b&lt;c&gt;.nii.gz" in text
    tiles = _tiles(parse_page(text))
    assert len(tiles) == len(df)
    assert '7" onmouseover="x' in {t.attrs["data-lesion-id"] for t in tiles}
    assert not any("onmouseover" in t.attrs for t in tiles)


def test_empty_lesion_table(phantom, tmp_path):
    tsv = tmp_path / "empty.tsv"
    phantom["lesions"].iloc[0:0].to_csv(tsv, sep="\t", index=False)
    out = _render(phantom, tmp_path / "p.html", lesions_tsv=tsv, dropped_tsv=None)
    text = out.read_text()
    assert len(_tiles(parse_page(text))) == 0
    assert "No lesion was detected" in text
    assert "No table of dropped candidates was given" in text


def test_na_values_shown_as_na(phantom, tmp_path):
    df = phantom["lesions"].copy()
    df["prob_max"] = np.nan
    tsv = tmp_path / "na.tsv"
    df.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    text = _render(phantom, tmp_path / "p.html", lesions_tsv=tsv).read_text()
    assert len(_tiles(parse_page(text))) == len(df)
    assert "p<sub>max</sub> n/a" in text


# ----------------------------------------------------------------------------------------------
# user errors name the file


def test_missing_centroid_column_is_an_input_error(phantom, tmp_path):
    tsv = tmp_path / "noijk.tsv"
    phantom["lesions"].drop(columns=["k"]).to_csv(tsv, sep="\t", index=False)
    with pytest.raises(InputError, match=r"noijk\.tsv.*k"):
        _render(phantom, tmp_path / "p.html", lesions_tsv=tsv)


def test_centroid_outside_grid_is_an_input_error(phantom, tmp_path):
    df = phantom["lesions"].copy()
    df.loc[2, "i"] = 500
    tsv = tmp_path / "outside.tsv"
    df.to_csv(tsv, sep="\t", index=False)
    with pytest.raises(InputError, match=r"outside\.tsv.*outside the image grid"):
        _render(phantom, tmp_path / "p.html", lesions_tsv=tsv)
    assert not (tmp_path / "p.html").exists()


def test_table_of_another_participant_is_an_input_error(phantom, tmp_path):
    with pytest.raises(InputError, match=r"lesions\.tsv.*sub-02"):
        _render(phantom, tmp_path / "p.html", participant_id="02")


def test_images_on_different_grids_are_an_input_error(phantom, tmp_path):
    img = nib.load(str(phantom["swi"]))
    other = tmp_path / "swi_shifted.nii.gz"
    aff = img.affine.copy()
    aff[0, 3] += 2.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), str(other))
    with pytest.raises(InputError, match=r"swi_shifted\.nii\.gz.*working grid"):
        _render(phantom, tmp_path / "p.html", swi=other)


def test_missing_table_is_an_input_error(phantom, tmp_path):
    with pytest.raises(InputError, match=r"nope\.tsv.*does not exist"):
        _render(phantom, tmp_path / "p.html", lesions_tsv=tmp_path / "nope.tsv")


# ----------------------------------------------------------------------------------------------
# pictures


def test_reorientation_keeps_voxel_identity(phantom):
    grid = load_grid(phantom["t2"], phantom["swi"], phantom["qsm"], phantom["mask"], phantom["dseg"])
    assert grid.axcodes_in == ("L", "P", "S")
    t2 = np.asarray(nib.load(str(phantom["t2"])).dataobj)
    rng = np.random.default_rng(1)
    for ijk in rng.integers(0, t2.shape, size=(50, 3)):
        assert grid.t2[grid.to_ras_index(ijk)] == t2[tuple(ijk)]


def test_lesion_tile_is_centred_on_the_lesion(phantom):
    grid = load_grid(phantom["t2"], phantom["swi"], phantom["qsm"], phantom["mask"], phantom["dseg"])
    for _, row in phantom["lesions"].iterrows():
        pic = lesion_tile_picture(grid, grid.to_ras_index((row.i, row.j, row.k)), panel_px=92)
        assert pic.shape == (92, 4 * 92 + 3 * 2, 3)
        panels = [pic[:, n * 94:n * 94 + 92] for n in range(4)]
        c = slice(44, 48)
        # the lesion is dark on SWI and paramagnetic (bright) on QSM at the centre of its tile
        assert panels[1][c, c].mean() < panels[1].mean()
        assert panels[2][c, c].mean() > panels[2].mean()
        # its outline is drawn near the centre in its class colour, only on the last panel
        colour = {"cmb": (255, 40, 40), "iron": (255, 200, 0)}[row.label]
        hit = np.all(panels[3] == colour, axis=2)
        ys, xs = np.nonzero(hit)
        assert hit.any() and np.min(np.hypot(ys - 45.5, xs - 45.5)) < 15
        assert not np.all(panels[1] == colour, axis=2).any()


def test_edges_follow_a_disk_boundary():
    yy, xx = np.mgrid[0:80, 0:80]
    r = np.hypot(yy - 40, xx - 40)
    gray = np.where(r < 25, 200, 30).astype(np.uint8)
    e = edges(gray)
    assert e.sum() > 100  # a closed contour of about 2 pi 25 pixels
    assert np.all(np.abs(r[e] - 25) < 2.0)


# ----------------------------------------------------------------------------------------------
# cohort page


def _cohort_inputs(tmp_path):
    rows = []
    for n, (n_cmb, n_iron) in enumerate([(2, 1), (0, 3), (4, 0)], start=1):
        for lab, count in (("cmb", n_cmb), ("iron", n_iron)):
            for m in range(count):
                rows.append({"participant_id": f"sub-0{n}", "lesion_id": len(rows) + 1, "label": lab,
                             "volume_mm3": 5.0 + m, "qsm_mean_ppm": 0.3 if lab == "cmb" else 0.1,
                             "region": "deep"})
    group = tmp_path / "group.tsv"
    pd.DataFrame(rows).to_csv(group, sep="\t", index=False)
    subjects = [
        {"participant_id": "sub-01", "status": "done", "n_cmb": 2, "n_iron": 1, "iron_volume_mm3": 5.0,
         "report": "sub-01/sub-01.html"},
        {"participant_id": "sub-02", "status": "cached", "n_cmb": 0, "n_iron": 3, "iron_volume_mm3": 18.0,
         "report": "sub-02/sub-02.html"},
        {"participant_id": "sub-03", "status": "done", "n_cmb": 4, "n_iron": 0, "iron_volume_mm3": 0.0,
         "report": "sub-03/sub-03.html"},
        {"participant_id": "sub-04", "status": "failed", "reason": "T2w <file> is truncated", "report": None},
    ]
    return subjects, group


def test_cohort_page_lists_failed_first_with_links(tmp_path):
    subjects, group = _cohort_inputs(tmp_path)
    out = render_cohort_report(tmp_path / "report.html", subjects, group)
    text = out.read_text()
    els = parse_page(text)
    body_rows = [e for e in els if e.tag == "tr" and "class" in e.attrs]
    assert [r.attrs["class"] for r in body_rows][0] == "failed"
    assert text.index("sub-04") < text.index("sub-01") < text.index("sub-03")
    links = [e.attrs["href"] for e in els if e.tag == "a" and e.attrs.get("href", "").endswith(".html")]
    assert links == ["sub-01/sub-01.html", "sub-03/sub-03.html", "sub-02/sub-02.html"]
    assert "T2w &lt;file&gt; is truncated" in text
    assert "<script" not in text
    assert "disagree" not in text and "in the group lesion table" not in text
    plots = [e for e in els if e.tag == "img"]
    assert len(plots) == 1
    assert decode_data_png(plots[0].attrs["src"]).size[0] > 600


def test_cohort_page_flags_counts_that_disagree_with_the_group_table(tmp_path):
    subjects, group = _cohort_inputs(tmp_path)
    subjects[0]["n_cmb"] = 5
    text = render_cohort_report(tmp_path / "report.html", subjects, group).read_text()
    assert "sub-01: 5 cmb in the subject summary but 2 in the group lesion table" in text


def test_cohort_page_without_group_table_and_unsafe_link(tmp_path):
    subjects, _ = _cohort_inputs(tmp_path)
    subjects[0]["report"] = "javascript:alert(1)"
    text = render_cohort_report(tmp_path / "report.html", subjects).read_text()
    assert 'href="javascript' not in text
    assert "No group lesion table was given" in text


def test_cohort_rejects_unknown_status(tmp_path):
    with pytest.raises(ValueError, match="status"):
        render_cohort_report(tmp_path / "r.html", [{"participant_id": "01", "status": "running"}])
    assert not (tmp_path / "r.html").exists()


def test_empty_brain_mask_is_reported_not_fatal(phantom, tmp_path):
    img = nib.load(str(phantom["mask"]))
    empty = tmp_path / "empty_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(empty))
    text = _render(phantom, tmp_path / "p.html", mask=empty).read_text()
    assert "The brain mask is empty" in text
    assert "lie outside the brain mask" in text
    assert len(_tiles(parse_page(text))) == len(phantom["lesions"])


def test_table_of_another_session_is_an_input_error(phantom, tmp_path):
    df = phantom["lesions"].copy()
    df.insert(1, "session_id", "ses-B")
    tsv = tmp_path / "ses.tsv"
    df.to_csv(tsv, sep="\t", index=False)
    with pytest.raises(InputError, match=r"ses\.tsv.*ses-B"):
        _render(phantom, tmp_path / "p.html", lesions_tsv=tsv, session_id="A")
    text = _render(phantom, tmp_path / "p.html", lesions_tsv=tsv, session_id="ses-B").read_text()
    assert "sub-01 ses-B" in text
