"""`fengqiao console ...`: the duty console's accounts, and its screenshots.

    fengqiao console user add NAME --role officer|viewer|admin [--person P] --config gateway.toml
    fengqiao console user passwd NAME --config gateway.toml
    fengqiao console user disable NAME | enable NAME | list --config gateway.toml
    fengqiao console screenshots DIR      # a sample township in a temporary dir, phone + desk PNGs

The password is asked twice on a terminal, or read from the first line of --password-file (or of
standard input when it is not a terminal). It is never an argument (it would be in the shell's
history and in `ps`). The console itself runs inside the gateway (`[console]` in its config).
"""

import getpass
import sys

from tools.errors import CliError

HELP = "duty console: user add|passwd|disable|enable|list; screenshots DIR"


def add_arguments(parser):
    from gateway.village.cliutil import add_db_arguments

    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    user = sub.add_parser("user", help="console accounts")
    usub = user.add_subparsers(dest="user_action", metavar="USER_ACTION", required=True)
    for name, text in (("add", "a new account"), ("passwd", "set a new password (ends its sessions)"),
                       ("disable", "refuse the account's logins and end its sessions"), ("enable", "allow it again"),
                       ("list", "every account")):
        p = usub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("name")
        if name == "add":
            from gateway.console.accounts import ROLES

            p.add_argument("--role", required=True, choices=ROLES)
            p.add_argument("--person", help="the person id in the village file whose name the actions carry "
                                            "(needed by officers once a village is imported)")
        if name in ("add", "passwd"):
            p.add_argument("--password-file", help="read the password from this file's first line")
        add_db_arguments(p)
    s = sub.add_parser("screenshots", help="phone (360 px) and desk (1366 px) screenshots of a sample township")
    s.add_argument("dir")
    s.add_argument("--lang", choices=("zh", "en", "both"), default="both")


def _password(args):
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise CliError("cannot read %s: %s" % (args.password_file, exc)) from exc
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password for %s: " % args.name)
    if getpass.getpass("again: ") != first:
        raise CliError("the two passwords differ")
    return first


def run(args):
    if args.action == "screenshots":
        from gateway.console.shots import screenshots

        for path in screenshots(args.dir, ("zh", "en") if args.lang == "both" else (args.lang,)):
            print(path)
        return 0
    from gateway.clock import SystemClock
    from gateway.console.accounts import AccountError, Accounts
    from gateway.village.cliutil import db_path
    from gateway.village.db import open_db

    db = open_db(db_path(args))
    try:
        accounts = Accounts(db, SystemClock())
        a = args.user_action
        if a == "list":
            for u in accounts.users():
                print("%-16s %-8s %-14s %s" % (u["username"], u["role"], u["person_id"] or "-",
                                               "disabled" if u["disabled"] else "active"))
            return 0
        if a == "add":
            accounts.add_user(args.name, _password(args), args.role, args.person)
            print("console user %s added (%s)" % (args.name, args.role))
        elif a == "passwd":
            accounts.passwd(args.name, _password(args))
            print("password of %s changed; its sessions are ended" % args.name)
        else:
            accounts.disable(args.name, a == "disable")
            print("console user %s %sd" % (args.name, a))
        return 0
    except AccountError as exc:
        raise CliError(str(exc)) from exc
    finally:
        db.close()
