"""Device labels: a QR code (segno) and text per device; a printable A4 sheet for a batch.

    info = label_info(plan_row, device_id, fingerprint)   # only what may be printed: no secret
    text(info)                                            # the terminal's label
    write_files([info, ...], directory)                   # <id>.svg and <id>.png per device
    write_sheet([info, ...], path)                        # A4 HTML sheet of 2 x 7 stickers

What a label carries (and nothing else; label_info takes no key, no Wi-Fi password, no CA):
village, household or checkpoint name and place id, role, joint-defence group, device id, the
short key fingerprint (first 8 hex digits of what `fengqiao device show` prints) and the date. The
QR encodes `FQ1:<device id>` (8 hex digits), so a phone or the duty office's scanner finds the device.

Chinese text: the SVG and the sheet carry the text as text in Noto Sans CJK SC (Debian's
fonts-noto-cjk, installed by scripts/setup.sh; the sheet names the font file too, so a browser
that does not know the family still finds it). The PNG is the SVG drawn by Debian's chromium
(through Playwright, as the duty console's screenshots are), so its text is pixels in that font and
prints the same on any machine. Without chromium the PNG is the QR code alone and `png_text` is
False in what write_files returns.
"""

import datetime
import html
import io
import os

CJK_FONT_FILE = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
FONT_FAMILY = "Noto Sans CJK SC"
FONTS = "'%s', 'Noto Sans SC', 'Source Han Sans SC', 'WenQuanYi Zen Hei', sans-serif" % FONT_FAMILY
CHROMIUM = "/usr/bin/chromium"
ROLE_TEXT = {"alarm": "报警按钮 alarm button", "checkin": "巡更点 check-in point"}
FIELDS = ("device_id", "qr", "role", "village", "place", "name", "group", "fingerprint", "date")


def qr_payload(device_id):
    return "FQ1:%08x" % device_id


def label_info(row, device_id, fingerprint, date=None):
    """The printable fields of one device (FIELDS). `row`: a plan row (role, village, place, name, group)."""
    return {"device_id": "%08x" % device_id, "qr": qr_payload(device_id), "role": row.get("role", ""),
            "village": row.get("village", ""), "place": row.get("place", ""), "name": row.get("name", ""),
            "group": row.get("group", ""), "fingerprint": fingerprint[:8],
            "date": date or datetime.date.today().isoformat()}


def lines(info):
    out = ["%s %s" % (info["village"], info["name"] or info["place"]),
           ROLE_TEXT.get(info["role"], info["role"]),
           "ID %s  FP %s" % (info["device_id"], info["fingerprint"])]
    if info["group"]:
        out.append("联防组 %s" % info["group"])
    out.append("%s  %s" % (info["place"], info["date"]))
    return out


def _cols(t):
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in t)   # a terminal's columns


def text(info):
    body = lines(info)
    width = max(_cols(x) for x in body)
    return "\n".join(["+" + "-" * (width + 4) + "+"] + ["|  %s%s  |" % (x, " " * (width - _cols(x))) for x in body]
                     + ["+" + "-" * (width + 4) + "+"])


def _qr(info):
    import segno

    return segno.make_qr(info["qr"], error="m")   # a full QR code: segno.make picks Micro QR, which phones and zbar do not read


def svg(info, scale=5):
    """One sticker as SVG: the QR on the left, the text lines on the right."""
    qr = _qr(info)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=scale, border=4, xmldecl=False, svgns=False, svgclass=None, lineclass=None,
            omitsize=True)
    inner = buf.getvalue().decode()
    inner = inner[inner.index(">") + 1:inner.rindex("</svg>")]   # the QR's path, without its own <svg>
    size = qr.symbol_size(scale=scale, border=4)[0]   # 4 modules of quiet zone: scanners need it
    texts = "".join('<text x="%d" y="%d" font-size="%d">%s</text>' % (size + 8, 22 + 20 * i, 15 if i == 0 else 13,
                                                                       html.escape(t))
                    for i, t in enumerate(lines(info)))
    height = max(size, 30 + 20 * len(lines(info)))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s">'
            '<rect width="100%%" height="100%%" fill="#fff"/><g>%s</g>%s</svg>'
            % (size + 300, height, size + 300, height, html.escape(FONTS, quote=True), inner, texts))


def _font_face():
    if not os.path.exists(CJK_FONT_FILE):
        return ""
    return ("@font-face{font-family:'%s';src:local('%s'),url('file://%s')}" % (FONT_FAMILY, FONT_FAMILY, CJK_FONT_FILE))


def render_pngs(infos, directory):
    """<id>.png of each label drawn by chromium (text included); False when chromium is not there."""
    try:
        from playwright.sync_api import Error as PlaywrightError, sync_playwright
    except ImportError:
        return False
    if not os.path.exists(CHROMIUM):
        return False
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(device_scale_factor=2)
                for info in infos:
                    page.set_content("<!doctype html><meta charset=utf-8><style>%s body{margin:0}</style>%s"
                                     % (_font_face(), svg(info)))
                    page.evaluate("document.fonts.ready")
                    page.locator("svg").screenshot(path=os.path.join(directory, info["device_id"] + ".png"))
            finally:
                browser.close()
    except PlaywrightError:
        return False
    return True


def write_files(infos, directory, png_text=True):
    """<id>.svg and <id>.png per label; returns {"files": [...], "png_text": bool}."""
    os.makedirs(directory, exist_ok=True)
    files = []
    for info in infos:
        path = os.path.join(directory, info["device_id"] + ".svg")
        with open(path, "w", encoding="utf-8") as f:
            f.write(svg(info))
        files.append(path)
    drawn = png_text and render_pngs(infos, directory)
    for info in infos:
        path = os.path.join(directory, info["device_id"] + ".png")
        if not drawn:
            _qr(info).save(path, scale=8, border=4)   # the QR alone: the text is in the SVG
        files.append(path)
    return {"files": files, "png_text": bool(drawn)}


def write_sheet(infos, path):
    """An A4 HTML page (or several) of 2 x 7 stickers, 95 x 38 mm; print at 100 %."""
    cells = "".join('<div class="s">%s</div>' % svg(i) for i in infos)
    doc = ("<!doctype html><html lang=zh-CN><meta charset=utf-8><title>Fengqiao labels</title><style>%s"
           "@page{size:A4;margin:10mm}body{margin:0;font-family:%s}"
           ".g{display:grid;grid-template-columns:repeat(2,95mm);grid-auto-rows:38mm;gap:2mm}"
           ".s{border:1px dashed #999;overflow:hidden;padding:2mm;break-inside:avoid}.s svg{width:100%%;height:100%%}"
           "</style><div class=g>%s</div></html>\n" % (_font_face(), FONTS, cells))
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path
