"""Group cards and the embedding map in a real browser (headless Chromium, as test_report_browser): one
decision on a group card covers its members, a member taken out keeps its own decision, the saved CSV
says which is which and the export applies it; a rectangle or a click on the map filters the cards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fercure.stages.export import run_export
from fercure.workspace import read_table

from test_groups import grouped_workspace
from test_report import payload_of
from test_report_browser import browser, cards, click, wait_for_file  # noqa: F401 (the browser fixture)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture
def page(tmp_path, browser):  # noqa: F811
    ws, audit = grouped_workspace(tmp_path)
    browser.get(ws.report.resolve().as_uri())
    browser.execute_script("try { localStorage.clear(); } catch (e) { /* file: pages may have none */ }")
    browser.get(ws.report.resolve().as_uri())
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "count").text.startswith("Showing"))
    Select(browser.find_element(By.ID, "f-size")).select_by_visible_text("200")
    Select(browser.find_element(By.ID, "f-cat")).select_by_value("all")
    return ws, audit, browser


def test_a_group_card_decides_every_member_and_a_member_taken_out_keeps_its_own(page, tmp_path):
    ws, audit, d = page
    gid = audit.loc[audit["group_id"] != "", "group_id"].value_counts().index[0]
    members = audit.loc[audit["group_id"] == gid, "sample_id"].tolist()
    shown = {c["id"] for c in cards(d)}
    assert gid in shown and not (set(members) - {gid}) & shown  # the others are on their group's card
    card = f'#list .card[data-id="{gid}"]'
    on_card = d.execute_script(f"return Array.from(document.querySelectorAll('{card} .member')).map(m => m.dataset.id)")
    assert sorted(on_card) == sorted(set(members) - {gid})

    click(d, f"{card} .decide button.drop")
    assert d.find_element(By.ID, "ndec").text == f"{len(members)} decisions"
    out_id = on_card[-1]
    click(d, f'{card} .member[data-id="{out_id}"] .take-out')
    assert d.find_element(By.ID, "ndec").text == f"{len(members) - 1} decisions"
    assert out_id in {c["id"] for c in cards(d)}  # a card of its own again, undecided
    click(d, f'#list .card[data-id="{out_id}"] .decide button.keep')
    click(d, "#dl-csv")
    saved = wait_for_file(d.downloads, "decisions-*.csv")
    rows = pd.read_csv(saved, dtype=str, keep_default_na=False).set_index("sample_id")
    assert sorted(rows.index) == sorted(members)
    assert rows.at[out_id, "action"] == "keep" and rows.at[out_id, "decided_via"] == "card"
    rest = rows.drop(index=out_id)
    assert (rest["action"] == "drop").all() and (rest["decided_via"] == "group").all() and (rest["group_id"] == gid).all()

    out = tmp_path / "cleaned.parquet"
    run_export(ws, out, decisions=saved)  # the file as the browser saved it
    saved.unlink()
    cleaned = read_table(out).set_index("sample_id")
    assert (cleaned.loc[rest.index, "action"] == "drop").all()
    assert all(f"one decision for group {gid}" in r for r in cleaned.loc[rest.index, "reason"])
    assert cleaned.at[out_id, "action"] == "keep" and "one decision for" not in cleaned.at[out_id, "reason"]


def test_a_rectangle_or_a_click_on_the_map_lists_the_cards_it_holds(page):
    ws, audit, d = page
    data = payload_of(ws.report.read_text(encoding="utf-8"))
    m, ids, grp = data["map"], data["rows"]["id"], data["rows"]["grp"]
    svg = d.find_element(By.ID, "map-svg")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", svg)
    box = d.execute_script("const b = arguments[0].getBoundingClientRect(); return [b.left, b.top, b.width, b.height]",
                           svg)
    x, r = np.array(m["x"]), np.array(m["r"])
    # a rectangle over the left part of the map, its right edge in a wide gap between two listed points
    xs = np.unique(x[r >= 0])
    k = max(range(1, len(xs)), key=lambda i: (xs[i] - xs[i - 1]) * min(i, len(xs) - i))
    split = (xs[k - 1] + xs[k]) / 2
    to_px = lambda v, size: (v + 20) / 1040 * size - size / 2  # noqa: E731  (offset from the centre)
    ActionChains(d).move_to_element_with_offset(svg, to_px(-15, box[2]), to_px(-15, box[3])).click_and_hold() \
        .move_to_element_with_offset(svg, to_px(split, box[2]), to_px(1015, box[3])).release().perform()
    picked = {int(p) for p in r[(x < split) & (r >= 0)]}
    # a group member in the rectangle shows its group's card
    want = {ids[grp[p]] if grp[p] >= 0 else ids[p] for p in picked}
    got = {c["id"] for c in cards(d)}
    assert want and got == want
    assert len(got) < len({i for i, g in zip(ids, grp) if g < 0 or ids[g] == i})  # a filter, not everything
    assert int(svg.get_attribute("data-selected")) == len(picked)
    chip = d.find_element(By.CSS_SELECTOR, "#chips").text
    assert "map selection" in chip

    # a click on one listed point: its card alone
    p = next(i for i in range(len(r)) if r[i] >= 0 and grp[r[i]] < 0)
    px = box[0] + (m["x"][p] + 20) / 1040 * box[2]
    py = box[1] + (1000 - m["y"][p] + 20) / 1040 * box[3]
    ActionChains(d).move_to_element_with_offset(svg, px - box[0] - box[2] / 2, py - box[1] - box[3] / 2).click() \
        .perform()
    got = [c["id"] for c in cards(d)]
    assert ids[r[p]] in got and len(got) <= 3  # the nearest point; a close neighbour's card at most besides
    click(d, "#chips button")
    assert len(cards(d)) > len(got)
    assert not [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def test_similar_faces_list_a_cards_neighbours_with_their_labels(page):
    ws, audit, d = page
    data = payload_of(ws.report.read_text(encoding="utf-8"))
    ids, nn = data["rows"]["id"], data["rows"]["nn"]
    spot = 1 << data["flags"].index("spot_check")  # a spot check is shown blind: no similar faces there
    i = next(k for k, n in enumerate(nn) if sum(x[2] >= 0 for x in n) >= 2 and data["rows"]["grp"][k] < 0
             and not data["rows"]["flags"][k] & spot)
    card = f'#list .card[data-id="{ids[i]}"]'
    texts = d.execute_script(f"return Array.from(document.querySelectorAll('{card} .similar .nn')).map(e => e.textContent)")
    assert texts == [f"{data['labels'][x[0]]} {round(100 * x[1])}%" for x in nn[i]]
    click(d, f"{card} .show-similar")
    got = {c["id"] for c in cards(d)}
    listed = {ids[x[2]] for x in nn[i] if x[2] >= 0}
    grp = data["rows"]["grp"]
    want = {ids[grp[k]] if grp[k] >= 0 else ids[k] for k in [i] + [x[2] for x in nn[i] if x[2] >= 0]}
    assert ids[i] in got and got == want and listed
    click(d, "#chips button")  # the whole list again
    blind = next(k for k, f in enumerate(data["rows"]["flags"]) if f & spot and nn[k])
    assert d.find_elements(By.CSS_SELECTOR, f'#list .card.blind[data-id="{ids[blind]}"]')
    assert not d.find_elements(By.CSS_SELECTOR, f'#list .card[data-id="{ids[blind]}"] .similar')
