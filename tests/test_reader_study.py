"""Reader study end to end in headless Chromium: `make` builds a blinded 6-case set (2 pairs, 4 singles) from
lung1 slabs tampered by the classical methods; a scripted reader answers 3 cases, closes the page, resumes at
case 4 and finishes; `analyse` reproduces the AUCs and localisation hits computed here by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfake.cli import main
from medfake.data.samples import sample_path
from medfake.io import save_scan
from medfake.tamper import TamperRequest, tamper_file
from medfake.viewer.server import BackgroundServer, new_token
from medfake.viewer.study import Study
from medfake.viewer.study_app import create_study_app

READER = "reader_1"


@pytest.fixture(scope="module")
def study(lung1, tmp_path_factory):
    """lung1_a: slices 29-36 (the nodule at slice 4), healthy_b: slices 5-12, both cut to rows 180-435 and
    columns 100-419 (small, so the test is quick). Four tampered copies by the classical methods."""
    root = tmp_path_factory.mktemp("study")

    def slab(z0, name):
        voxels = np.asarray(lung1.voxels[z0:z0 + 8, 180:436, 100:420]).copy()
        return save_scan(lung1.with_voxels(voxels, origin=tuple(lung1.voxel_to_world((z0, 180, 100))), meta={}),
                         root / name)

    a, b = slab(29, "lung1_a.nrrd"), slab(5, "healthy_b.nrrd")
    tampered = root / "tampered"
    tamper_file(TamperRequest(target=a, outdir=tampered, action="remove", coords=["4,179,118"], method="inpaint"))
    for target, zyx, donor in ((a, "4,170,270", None), (b, "4,120,280", a), (b, "4,60,250", a)):
        tamper_file(TamperRequest(target=target, outdir=tampered, action="inject", coords=[zyx], method="copy-move",
                                  donor=donor, donor_coord="4,179,118"))
    folder = root / "reading"
    main(["reader-study", "make", "--genuine", str(a), "--genuine", str(b), "--tampered", str(tampered / "manifest.csv"),
          "-o", str(folder), "--pairs", "2", "--singles", "4", "--seed", "5",
          "--nodules", str(sample_path("lung1").parent / "annotations.csv")])
    return folder


def scripted_rating(truth: dict, k: int) -> tuple[int, int]:
    """(malignancy, manipulation): mostly right, with a few deliberate mistakes so AUCs are not 1."""
    manipulation = (4 if truth["tampered"] else 2) + (-3 if k % 4 == 1 else 0) + (1 if k % 3 == 0 else 0)
    malignancy = (4 if truth["shows_nodule"] else 2) + (-1 if k % 5 == 2 else 0)
    return max(1, min(5, malignancy)), max(1, min(5, manipulation))


def answer_case(page, key, given, screenshots):
    data = page.evaluate("R.caseData")
    for k, image in enumerate(data["images"]):
        truth = key["images"][image["id"]]
        malignancy, manipulation = scripted_rating(truth, len(given))
        page.check(f"input[name=malignancy-{k}][value='{malignancy}']")
        page.check(f"input[name=manipulation-{k}][value='{manipulation}']")
        click = None
        if truth["tampered"] and len(given) % 2 == 0:  # click on the manipulated place, every other image
            z, row, col = truth["locations_zyx"][0]
            slider = page.locator(".image-block").nth(k).locator("input[type=range]")
            slider.fill(str(z))
            slider.dispatch_event("input")
            page.wait_for_function(f"R.blocks[{k}].slice && R.blocks[{k}].index === {z}")
            box = page.locator(".image-block canvas").nth(k).bounding_box()
            page.mouse.click(box["x"] + (col + 0.5) * box["width"] / image["shape"][2],
                             box["y"] + (row + 0.5) * box["height"] / image["shape"][1])
            click = page.evaluate(f"R.blocks[{k}].click")
        given.append({"truth": truth, "malignancy": malignancy, "manipulation": manipulation, "click": click,
                      "image": image["id"]})
    if not (screenshots / "reader_case.png").exists() and len(data["images"]) == 2:
        page.screenshot(path=screenshots / "reader_case.png")
    position = int(page.evaluate("document.body.dataset.position"))
    page.click("#submit")
    page.wait_for_function(f"document.body.dataset.position !== '{position}'")
    return position


def hand_auc(labels, scores) -> float:
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def login(page, url):
    page.goto(url)
    page.fill("#reader-name", READER)
    page.click("#start")
    page.wait_for_function("document.body.dataset.position !== '0'")
    return page.evaluate("document.body.dataset.position")


def test_a_scripted_reader_completes_the_study_across_a_closed_page_and_analyse_matches_by_hand(
        study, context, screenshots, tmp_path, capsys):
    key = json.loads((study / "key.json").read_text())
    cases = json.loads((study / "cases.json").read_text())["cases"]
    assert len(cases) == 6 and sorted(c["layout"] for c in cases).count("pair") == 2
    assert "tampered" not in (study / "cases.json").read_text()  # the readers' side says nothing of the truth
    token = new_token()
    given = []
    with BackgroundServer(create_study_app(Study(study), token), token) as server:
        page = context.new_page()
        assert login(page, server.url) == "1"
        for expected in (1, 2, 3):
            assert answer_case(page, key, given, screenshots) == expected
        page.close()  # the browser goes away mid-study
        assert len((study / "answers" / f"{READER}.jsonl").read_text().splitlines()) == 3
        page = context.new_page()
        assert login(page, server.url) == "4"  # resumes where it stopped
        for expected in (4, 5, 6):
            assert answer_case(page, key, given, screenshots) == expected
        assert page.evaluate("document.body.dataset.position") == "done"
        assert page.is_visible("#finished")
        page.screenshot(path=screenshots / "reader_done.png")

    out = tmp_path / "analysis"
    main(["reader-study", "analyse", str(study), "-o", str(out)])
    printed = capsys.readouterr().out
    result = json.loads((out / "analysis.json").read_text())["readers"][READER]
    labels = [g["truth"]["tampered"] for g in given]
    assert result["n"] == len(given) == 8
    assert result["manipulation"]["auc"] == pytest.approx(hand_auc(labels, [g["manipulation"] for g in given]))
    for name, tampered in (("originals", False), ("modified", True)):
        subset = [g for g in given if g["truth"]["tampered"] == tampered]
        expected = hand_auc([g["truth"]["shows_nodule"] for g in subset], [g["malignancy"] for g in subset])
        assert result["diagnostic"][name]["auc"] == pytest.approx(expected)
    clicked = [g for g in given if g["click"] is not None]
    assert clicked and result["localisation"] == {"tampered_images": sum(labels), "clicked": len(clicked),
                                                  "hits": len(clicked)}
    assert f"{result['manipulation']['auc']:.3f}" in printed and (out / "report.html").exists()
    assert (out / "roc.png").stat().st_size > 1000


def test_the_study_server_never_hands_out_the_key_or_other_files(study):
    import http.client

    token = new_token()
    with BackgroundServer(create_study_app(Study(study), token), token) as server:
        host, port = server.base.split("//")[1].rstrip("/").split(":")
        for path in ("/key.json", "/static/key.json", "/static/..%2f..%2fkey.json", "/api/image/..%2fkey/0",
                     "/api/case/..%2f..%2fkey/case-01", "/api/progress/..%2f..%2fkey"):
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            connection.request("GET", f"{path}?token={token}")
            response = connection.getresponse()
            body = response.read()
            assert response.status in (400, 404) and b"tampered" not in body, path
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", "/api/progress/someone")
        assert connection.getresponse().status == 403


def test_make_refuses_impossible_sets_and_answers_are_validated(study, tmp_path, capsys):
    from medfake.errors import MedfakeError

    root = study.parent
    args = ["reader-study", "make", "--genuine", str(root / "lung1_a.nrrd"),
            "--tampered", str(root / "tampered" / "manifest.csv")]
    for extra, message in ((["--pairs", "4", "--singles", "2"], "need 5 tampered scans; the manifest names 4"),
                           (["--singles", "4"], "need 2 genuine scans; --genuine gives 1")):
        with pytest.raises(SystemExit) as exit_info:
            main(args + ["-o", str(tmp_path / "s"), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args + ["-o", str(study), "--pairs", "1"])
    assert "a study is never overwritten" in capsys.readouterr().err

    loaded = Study(study)
    case = loaded.cases[loaded.case_ids[0]]
    good = [{"image": i, "malignancy": 3, "manipulation": 3, "click": None} for i in case["images"]]
    for images, message in (([{**good[0], "manipulation": 6}] + good[1:], "ratings run from 1 to 5"),
                            (good[::-1] if len(good) > 1 else [], "rate every image of the case"),
                            ([{**good[0], "click": [0, 0, 10_000]}] + good[1:], "outside the image")):
        with pytest.raises(MedfakeError, match=message):
            loaded.record("tester", case["id"], images)
    for name in ("../evil", "", ".hidden", "a/b"):
        with pytest.raises(MedfakeError, match="reader name"):
            loaded.record(name, case["id"], good)
    assert not (study / "answers" / "tester.jsonl").exists()
