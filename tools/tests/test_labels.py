"""Device labels (tools/labels.py): the QR decodes (zbarimg, Debian's zbar-tools) to the printed id,
no secret is on a label, the PNG carries the Chinese text drawn in a CJK font, the A4 sheet holds
every sticker."""

import os
import re
import shutil
import subprocess

import pytest

from tools import labels

ROW = {"role": "alarm", "village": "东山村", "place": "hh-e02", "name": "李秀英家", "group": "east-lane",
       "power": "mains", "checkpoint_id": None}
KEY_HEX = "5f" * 32
FINGERPRINT = "26a4aefd56050e7c"


def zbar(path):
    if shutil.which("zbarimg") is None:
        pytest.fail("zbarimg is missing: scripts/setup.sh installs zbar-tools (apt-get install zbar-tools)")
    out = subprocess.run(["zbarimg", "--quiet", "--raw", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_label_fields_carry_no_secret():
    info = labels.label_info(dict(ROW, key=KEY_HEX, wifi_password="correct horse"), 0x1A2, FINGERPRINT, "2026-12-07")
    assert set(info) == set(labels.FIELDS)
    printed = labels.text(info) + labels.svg(info)
    assert KEY_HEX not in printed and "correct horse" not in printed
    assert "000001a2" in printed and "26a4aefd" in printed and FINGERPRINT not in printed   # the short form only
    for want in ("东山村 李秀英家", "报警按钮", "联防组 east-lane", "hh-e02  2026-12-07"):
        assert want in labels.text(info)


@pytest.mark.timeout(120)
def test_png_svg_sheet_decode_to_the_printed_id(tmp_path):
    infos = [labels.label_info(ROW, 0x100 + i, FINGERPRINT, "2026-12-07") for i in range(3)]
    out = labels.write_files(infos, str(tmp_path))
    assert out["png_text"], "chromium (Debian's, via Playwright) should draw the label text into the PNG"
    for info in infos:
        png = tmp_path / (info["device_id"] + ".png")
        assert zbar(png) == "FQ1:" + info["device_id"]
        svg = (tmp_path / (info["device_id"] + ".svg")).read_text(encoding="utf-8")
        assert "ID %s" % info["device_id"] in svg and "东山村" in svg and labels.FONT_FAMILY in svg
    # the PNG is the sticker (QR + text), wider than the QR alone
    import struct

    with open(tmp_path / "00000100.png", "rb") as f:
        width, height = struct.unpack(">II", f.read(24)[16:24])
    assert width > 2 * height
    sheet = labels.write_sheet(infos, str(tmp_path / "sheet.html"))
    with open(sheet, encoding="utf-8") as f:
        doc = f.read()
    assert doc.count('class="s"') == 3 and "size:A4" in doc and KEY_HEX not in doc
    assert len(re.findall(r"ID 0000010[0-2]", doc)) == 3


@pytest.mark.timeout(120)
def test_chinese_renders_in_the_cjk_font(tmp_path):
    """The browser that draws the PNG has the CJK font the label names, and the Chinese text is drawn
    with it (not as empty boxes: its glyphs are as wide as the font's, not the fallback's)."""
    from playwright.sync_api import sync_playwright

    assert os.path.exists(labels.CJK_FONT_FILE), "fonts-noto-cjk (scripts/setup.sh)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=labels.CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content("<!doctype html><meta charset=utf-8><style>%s</style>%s"
                             % (labels._font_face(), labels.svg(labels.label_info(ROW, 0x100, FINGERPRINT))))
            page.evaluate("document.fonts.ready")
            assert page.evaluate("document.fonts.check(\"13px '%s'\", '东山村')" % labels.FONT_FAMILY)
            widths = page.evaluate("""() => {
                const c = document.createElement('canvas').getContext('2d');
                c.font = "13px '%s'"; const cjk = c.measureText('东山村李秀英').width;
                c.font = "13px monospace"; const tofu = c.measureText('\\u{10FFFD}\\u{10FFFD}').width;
                return [cjk, tofu]; }""" % labels.FONT_FAMILY)
            assert widths[0] >= 6 * 12, widths       # six full-width glyphs of a 13 px CJK font
        finally:
            browser.close()
