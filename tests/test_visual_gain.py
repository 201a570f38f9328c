import cv2
import numpy as np
import pytest

from judges.visual_gain import VisualGainJudge, _gray, budget_scale, code_boxes, image_gain, register
from schemas import sample as S
from tests.images import detailed_page, png, simple_sketch, zoom

BUDGET = 1280 * 28 * 28


@pytest.fixture(scope="module")
def page():
    return detailed_page()


def test_budget_scale_matches_qwen_budget():
    assert budget_scale(1000, 1000, BUDGET) == 1.0
    assert budget_scale(3000, 3000, BUDGET) == pytest.approx((BUDGET / 9e6) ** 0.5)


def test_registration_recovers_crop_box_and_magnification(page):
    out = zoom(page, 1450, 1450, 1700, 1600, 4)
    reg = register(page, out)
    assert reg.corr > 0.8
    assert reg.zoom_k == pytest.approx(4, rel=0.05)
    x, y, w, h = reg.box
    assert abs(x - 1450) <= 15 and abs(y - 1450) <= 15
    assert w == pytest.approx(250, rel=0.06) and h == pytest.approx(150, rel=0.06)


def test_zoom_on_tiny_text_in_large_image_scores_high(page):
    gain, why = image_gain(page, zoom(page, 1450, 1450, 1700, 1600, 4), BUDGET)
    assert gain >= 0.8, why


def test_output_equal_to_input_scores_zero(page):
    assert image_gain(page, page.copy(), BUDGET)[0] == 0.0


def test_downscaled_copy_scores_zero(page):
    small = cv2.resize(page, (1000, 1000), interpolation=cv2.INTER_AREA)
    assert image_gain(page, small, BUDGET)[0] == 0.0


def test_whole_input_copies_register_as_the_whole_image(page):
    """Copies, whole-image enhancements and resizes (no box in the code) are checked as the
    whole input before any search: the exact box at the exact scale."""
    H, W = page.shape
    brighter = cv2.convertScaleAbs(page, alpha=1.3, beta=-20)
    half = cv2.resize(page, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    for out, k in ((page.copy(), 1.0), (brighter, 1.0), (half, 0.5)):
        reg = register(page, out)
        assert reg.box == (0, 0, W, H) and reg.zoom_k == pytest.approx(k) and reg.corr >= 0.95
    # a region is still found by the search (the whole image does not fit it)
    assert register(page, zoom(page, 1450, 1450, 1700, 1600, 4)).box[2] == pytest.approx(250, rel=0.06)


def test_blank_and_tiny_outputs_score_zero(page):
    assert image_gain(page, np.full((500, 500), 128, np.uint8), BUDGET) == (0.0, "output blank")
    assert image_gain(page, page[1500:1520, 1500:1520], BUDGET)[0] == 0.0


def test_zoom_into_region_already_legible_at_budget_scores_low():
    sketch = simple_sketch()
    gain, why = image_gain(sketch, zoom(sketch, 90, 90, 420, 320, 3), BUDGET)
    assert gain < 0.1, why


def test_judge_takes_best_produced_image_and_handles_no_images(page):
    judge = VisualGainJudge()
    inp = S.image_record("in.png", png(page), 3000, 3000)
    good = S.image_record("z.png", png(zoom(page, 1450, 1450, 1700, 1600, 4)), 1000, 600)
    same = S.image_record("c.png", png(page), 3000, 3000)
    row = {S.IMAGES: [inp], S.REPLAY: [{S.CELL_IMAGES: [same]}, {S.CELL_IMAGES: [good]}]}
    assert judge.judge(row).score >= 0.8
    row[S.REPLAY] = [{S.CELL_IMAGES: []}]
    assert judge.judge(row).score == 0.0
    assert judge.judge({S.IMAGES: [], S.REPLAY: []}).score is None


def test_judge_stops_at_a_full_gain_with_the_verdict_of_all_images(page):
    """Nothing exceeds a gain of 1.0: the judge stops there, and its verdict (score and reason) is
    the one the maximum over every produced image gives."""
    judge = VisualGainJudge()
    inp = S.image_record("in.png", png(page), 3000, 3000)
    full = S.image_record("full.png", png(zoom(page, 1450, 1450, 1700, 1600, 4)), 1000, 600)
    copy = S.image_record("copy.png", png(page), 3000, 3000)
    gains = {i[S.IMG_NAME]: image_gain(page, _gray(i[S.IMG_BYTES]), BUDGET) for i in (full, copy)}
    assert gains["full.png"][0] == 1.0 and gains["copy.png"][0] == 0.0
    for order in ([full, copy], [copy, full], [full, full]):
        verdict = judge.judge({S.IMAGES: [inp], S.REPLAY: [{S.CELL_IMAGES: order}]})
        assert verdict.score == 1.0
        assert verdict.why == f"max over {len(order)} produced image(s): full.png: {gains['full.png'][1]}"


def test_code_boxes_reads_literal_crop_boxes_and_slices():
    code = (
        "box = (1450, 1450, 1700, 1600)\ncrop = img.crop(box)\n"
        "patch = arr[100:220, 40:90]\nsize = (3, 4, 5)\nbad = (9, 9, 1, 1)\nnot_code = (\n"
    )
    assert code_boxes(code) == []  # does not parse: no hints, the search decides
    code = code.replace("not_code = (\n", "")
    assert code_boxes(code) == [(1450, 1450, 1700, 1600), (40, 100, 90, 220)]


def test_code_box_is_used_only_when_the_pixels_confirm_it(page):
    out = zoom(page, 1450, 1450, 1700, 1600, 4)
    hinted = register(page, out, hints=((1450, 1450, 1700, 1600),))
    assert hinted.box == (1450, 1450, 250, 150) and hinted.zoom_k == pytest.approx(4) and hinted.corr > 0.95
    # a forged or unrelated box (elsewhere on the page, another size) is checked and dropped:
    # the search finds the real region, as without hints
    forged = register(page, out, hints=((100, 100, 350, 250), (2000, 300, 2100, 360)))
    plain = register(page, out)
    assert forged == plain
    assert abs(forged.box[0] - 1450) <= 15 and abs(forged.box[1] - 1450) <= 15
    # and the gain of a hinted registration is the gain of the region the code really showed
    assert image_gain(page, out, BUDGET, hints=((100, 100, 350, 250),)) == image_gain(page, out, BUDGET)


def test_judge_reads_the_boxes_of_the_trajectorys_code(page):
    judge = VisualGainJudge()
    inp = S.image_record("in.png", png(page), 3000, 3000)
    out = S.image_record("z.png", png(zoom(page, 1450, 1450, 1700, 1600, 4)), 1000, 600)
    code = "box = (1450, 1450, 1700, 1600)\nzoom = img.crop(box).resize((1000, 600))"
    row = {S.IMAGES: [inp], S.REPLAY: [{S.CELL_IMAGES: [out]}], S.TURNS: [{S.TURN_CODE: code}]}
    verdict = judge.judge(row)
    assert "region 250x150 zoom" in verdict.why and verdict.score >= 0.8


def test_judge_uses_the_replays_grey_input_and_ignores_one_of_another_size(page):
    """With the replay's grey pixels of the input (S.INPUT_GREYS) the verdict is the one the judge
    reaches decoding the input itself; a grey array of another size is not used."""
    inp = S.image_record("in.png", png(page), 3000, 3000)
    out = S.image_record("z.png", png(zoom(page, 1450, 1450, 1700, 1600, 4)), 1000, 600)
    row = {S.IMAGES: [inp], S.REPLAY: [{S.CELL_IMAGES: [out]}], S.TURNS: []}
    decoded = VisualGainJudge().judge(dict(row))
    handed = VisualGainJudge()
    assert handed.judge({**row, S.INPUT_GREYS: [page.copy()]}) == decoded
    assert np.array_equal(handed.grey(inp), page)  # cached for the dedup keys
    wrong = VisualGainJudge()
    assert wrong.judge({**row, S.INPUT_GREYS: [np.zeros((10, 10), np.uint8)]}) == decoded
    assert wrong.grey(inp).shape == (3000, 3000)
