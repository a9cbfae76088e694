"""Device labels: a QR code (segno) and text per device; a printable A4 sheet for a batch.

    info = label_info(plan_row, device_id, fingerprint)   # only what may be printed: no secret
    text(info)                                            # the terminal's label
    write_files(info, directory)                          # <id>.png (QR), <id>.svg (QR + text)
    write_sheet([info, ...], path)                        # A4 HTML sheet of stickers

The QR encodes `FQ1:<device id>` (8 hex digits) and nothing else, so a scanner at the gateway
finds the device. Text: village, household/checkpoint, group, device id, short fingerprint, date.
Chinese text: segno draws no text, so the PNG is the QR only; the SVG and the HTML sheet carry the
text as text and name the Noto CJK fonts (Debian's fonts-noto-cjk, installed by scripts/setup.sh).
"""

import datetime
import html
import os

FONTS = "'Noto Sans CJK SC', 'Noto Sans SC', 'Source Han Sans SC', 'WenQuanYi Zen Hei', sans-serif"
ROLE_TEXT = {"alarm": "报警按钮 alarm button", "checkin": "巡更点 check-in point"}


def qr_payload(device_id):
    return "FQ1:%08x" % device_id


def label_info(row, device_id, fingerprint, date=None):
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


def text(info):
    body = lines(info)
    width = max(len(x) for x in body) + 4
    return "\n".join(["+" + "-" * width + "+"] + ["|  %s" % x for x in body] + ["+" + "-" * width + "+"])


def _qr(info):
    import segno

    return segno.make(info["qr"], error="m")


def svg(info):
    import io

    buf = io.BytesIO()
    _qr(info).save(buf, kind="svg", scale=4, border=2, xmldecl=False, svgns=True)
    qr = buf.getvalue().decode()
    size = _qr(info).symbol_size(scale=4, border=2)[0]
    texts = "".join('<text x="%d" y="%d" font-size="13">%s</text>' % (size + 8, 18 + 18 * i, html.escape(t))
                    for i, t in enumerate(lines(info)))
    return ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="%s">'
            '<g>%s</g>%s</svg>' % (size + 330, max(size, 110), html.escape(FONTS, quote=True), qr, texts))


def write_files(info, directory):
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, info["device_id"])
    _qr(info).save(base + ".png", scale=8, border=4)
    with open(base + ".svg", "w", encoding="utf-8") as f:
        f.write(svg(info))
    return base + ".png", base + ".svg"


def write_sheet(infos, path):
    """An A4 page of 2 x 7 stickers (print at 100 %)."""
    cells = "".join('<div class="s">%s</div>' % svg(i) for i in infos)
    doc = ("<!doctype html><html lang=zh-CN><meta charset=utf-8><title>Fengqiao labels</title><style>"
           "@page{size:A4;margin:10mm}body{margin:0;font-family:%s}"
           ".g{display:grid;grid-template-columns:repeat(2,95mm);grid-auto-rows:38mm;gap:2mm}"
           ".s{border:1px dashed #999;overflow:hidden;padding:2mm}.s svg{width:100%%;height:auto}"
           "</style><div class=g>%s</div></html>\n" % (FONTS, cells))
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path
