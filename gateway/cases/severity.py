"""Graded response: which of the five levels an alarm gets, and what that level means.

Level by (alarm kind, place): the rule for that kind at the nearest place (the household itself,
then its grid, village, township, county) wins; then the kind's rule without a place; then the
configured default level. Level 5 (the highest) goes to the township duty officer at once; the
others escalate to the township when nobody acknowledges within the village deadline and to the
county at the township deadline (both counted from the moment the alarm was stored).
"""

from gateway.village.config import ALARM_KINDS, DEFAULT_LEVEL, DEFAULT_LEVELS

KIND_NAMES = {code: name for name, code in ALARM_KINDS.items()}
HIGHEST = 5


def kind_name(code):
    return KIND_NAMES.get(code, "kind-%s" % code)


def level_for(directory, kind_code, place_id):
    kind = kind_name(kind_code)
    rules = [r for r in directory.rules if r["kind"] == kind]
    for pid in directory.ancestors(place_id) if place_id else []:
        for r in rules:
            if r["place"] == pid:
                return r["level"]
    for r in rules:
        if r["place"] is None:
            return r["level"]
    return directory.settings.get("severity_default", DEFAULT_LEVEL)


def level_info(directory, level):
    info = directory.levels.get(level)
    if info is None:  # a directory without levels (should not happen after import): built-in table
        info = {x["level"]: x for x in DEFAULT_LEVELS}[level]
    return info


def deadlines(directory, level, opened_at):
    """(village deadline or None when the level goes straight to the township, township deadline)."""
    info = level_info(directory, level)
    village = None if level >= HIGHEST else opened_at + info["village_deadline_s"]
    return village, opened_at + info["township_deadline_s"]
