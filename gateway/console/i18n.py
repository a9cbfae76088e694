"""The console's words in Chinese (the default) and English: t(lang, key)."""

LANGS = ("zh", "en")

_T = {
    "title": ("烽桥 值班台", "Fengqiao duty console"),
    "board": ("警情", "Alarms"), "devices": ("设备", "Devices"), "patrol": ("今日巡逻", "Patrol today"),
    "history": ("历史查询", "History"), "logout": ("退出", "Log out"), "login": ("登录", "Log in"),
    "username": ("用户名", "User name"), "password": ("密码", "Password"),
    "login_failed": ("用户名或密码错误", "Wrong user name or password"),
    "locked": ("登录失败次数过多，请 %d 秒后再试", "Too many failed logins: try again in %d s"),
    "stream_down": ("与网关的实时连接已断开，正在重连… 新警情可能未显示", "Live connection to the gateway lost, reconnecting… new alarms may not show"),
    "no_open": ("当前没有未结警情", "No open alarms"),
    "level": ("等级", "Level"), "place": ("户/地点", "Household / place"), "village": ("村", "Village"),
    "device": ("设备", "Device"), "age": ("时长", "Age"), "step": ("环节", "Step"), "countdown": ("升级倒计时", "Escalates in"),
    "turn": ("责任方", "Whose turn"), "kind": ("类型", "Kind"), "case": ("案件", "Case"), "status": ("状态", "Status"),
    "received": ("受理", "Received"), "dispatched": ("分流", "Dispatched"), "acknowledged": ("办理", "Handled"),
    "feedback": ("反馈", "Feedback"), "closed": ("结单", "Closed"), "cancelled": ("已撤销", "Cancelled"),
    "open": ("未确认", "Unacknowledged"), "escalated": ("升级", "Escalated"), "joined": ("并案", "Joined"),
    "note": ("备注", "Note"), "level_raised": ("等级提高", "Level raised"), "cancel_refused": ("撤销被拒", "Cancel refused"),
    "village_turn": ("村", "village"), "township_turn": ("乡镇", "township"), "county_turn": ("县", "county"),
    "ack": ("确认出警", "Acknowledge"), "ack_note": ("确认说明（可选）", "Note (optional)"),
    "dispatch": ("派给", "Dispatch to"), "dispatch_btn": ("派单", "Dispatch"),
    "add_note": ("添加备注", "Add note"), "close": ("结单", "Close case"),
    "outcome": ("结果", "Outcome"), "outcome_real": ("真实警情", "Real alarm"), "outcome_false": ("误报", "False alarm"),
    "outcome_test": ("测试", "Test"), "outcome_other": ("其他", "Other"),
    "close_note": ("处理情况（必填）", "What happened, what was done (required)"),
    "timeline": ("五步闭环", "Five-step loop"), "when": ("时间", "When"), "who": ("人员", "Who"),
    "what": ("内容", "What"), "back": ("返回警情", "Back to alarms"),
    "viewer_note": ("只读账号：不能操作案件", "Read-only account: you cannot act on cases"),
    "done_ack": ("已确认，按钮将显示“有人正在赶来”", "Acknowledged: the button will show someone is coming"),
    "done_close": ("已结单", "Case closed"), "done_dispatch": ("已派单", "Dispatched"), "done_note": ("备注已保存", "Note saved"),
    "online": ("在线", "Online"), "offline": ("离线", "Offline"), "revoked": ("已吊销", "Revoked"),
    "battery_low": ("电量低", "Battery low"), "tamper": ("外壳被打开", "Tamper"),
    "quarantined": ("已隔离（消息泛滥）", "Quarantined (flooding)"), "last_seen": ("最后联系", "Last seen"),
    "all": ("全部", "All"), "filter": ("筛选", "Filter"), "grid": ("网格", "Grid"), "role": ("类型", "Role"),
    "alarm_button": ("报警按钮", "Alarm button"), "checkpoint": ("巡更点", "Check-in point"),
    "route": ("路线", "Route"), "team": ("巡逻队", "Team"), "planned": ("计划", "Planned"), "started": ("开始", "Started"),
    "progress": ("进度", "Progress"), "flagged": ("可疑打卡", "Flagged check-ins"), "reports": ("报表", "Reports"),
    "no_rounds": ("今日没有巡逻计划", "No patrol rounds today"),
    "complete": ("完成", "complete"), "late": ("迟到", "late"), "missed": ("漏巡", "missed"),
    "out_of_order": ("顺序错误", "out of order"), "not_started": ("未开始", "not started"), "running": ("进行中", "running"),
    "pending": ("未到时间", "pending"), "visited": ("已到", "visited"),
    "from": ("从", "From"), "to": ("到", "To"), "search": ("查询", "Search"),
    "response_times": ("各环节用时（秒，自受理起）", "Seconds from the alarm to each step"),
    "median": ("中位数", "median"), "max": ("最长", "max"), "count": ("数量", "count"),
    "live": ("实时动态", "Live activity"), "new_alarm": ("新警情", "NEW ALARM"),
    "case_busy": ("操作未生效：%s", "Not done: %s"), "csrf": ("页面已过期，请重试", "The page expired, please try again"),
    "forbidden": ("无权限", "Not allowed"), "users": ("账号", "Users"), "person": ("人员编号", "Person id"),
    "disabled": ("已停用", "disabled"), "group": ("联防组", "Group"), "first_responder": ("首位响应人", "First responder"),
    "inputs": ("报警输入", "Inputs"), "pending_effects": ("等待网关发送的动作", "Actions waiting for the gateway"),
    "lang_other": ("English", "中文"),
    "to_person": ("人员", "A person"), "to_team": ("整个队伍", "A whole team"),
    "emergency": ("紧急求助", "emergency"), "fire": ("火警", "fire"), "medical": ("急救", "medical"),
    "intrusion": ("入室", "intrusion"),
    # why a check-in was flagged (gateway/patrol/service.py)
    "flag_too_fast": ("移动过快", "too fast"), "flag_unknown_card": ("未登记的卡", "unknown card"),
    "flag_unknown_checkpoint": ("未知巡更点", "unknown checkpoint"),
    "flag_checkpoint_mismatch": ("巡更点与设备位置不符", "checkpoint does not match the device's place"),
    "flag_clock_unknown": ("设备时间未知", "device clock unknown"), "flag_clock_ahead": ("设备时间超前", "device clock ahead"),
    "flag_clock_disagrees": ("设备时间偏差过大", "device clock off"),
}


# The five standard level names (gateway/village/config.py defaults, sample_village.toml); a
# village's own names are shown as the village file spells them.
_LEVELS = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色", "critical": "特急"}


def level(lang, name):
    return _LEVELS.get(name, name) if lang != "en" else name


def t(lang, key, *args):
    pair = _T.get(key)
    if pair is None:
        return key
    text = pair[1 if lang == "en" else 0]
    return text % args if args else text


def pick(accept_language, cookie):
    if cookie in LANGS:
        return cookie
    return "zh"
