"""`metanoia gateway web ...`: the homeowner and operator web pages (docs/homeowner.md, docs/operator.md).

- ``serve``: run the pages with uvicorn (no access log of uvicorn's own: it
  would write pairing links, which hold claim codes; ``gateway.web.access``
  logs paths without their query).
- ``add-operator LOGIN``: create an operator account; the password is read
  from the terminal (or stdin with ``--password-stdin``), never from argv.
- ``link-household LOGIN HOUSEHOLD``: give a homeowner account a household
  whose meters were paired outside the pages.
- ``reset-2fa LOGIN``: a lost phone; the account enrols again.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import time
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(gsub: argparse._SubParsersAction) -> None:
    web = gsub.add_parser("web", help="the homeowner and operator web pages")
    wsub = web.add_subparsers(dest="web_command", metavar="SUBCOMMAND")
    web.set_defaults(func=lambda _a: (web.print_help(), EXIT_USAGE)[1])

    s = wsub.add_parser("serve", help="serve the pages (Starlette on uvicorn)")
    s.add_argument("--db", required=True, type=Path, help="the gateway's SQLite database")
    s.add_argument("--grid", required=True, metavar="ID")
    s.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT")
    s.add_argument("--public-url", default=None, metavar="URL",
                   help="the URL homeowners reach (on the QR labels); default http://LISTEN")
    s.add_argument("--insecure-cookie", action="store_true",
                   help="session cookie without Secure (only for http:// on 127.0.0.1: tests, the demo)")
    s.add_argument("--wallet-dir", type=Path, help="the wallet service (manual orders, policy, key export)")
    s.add_argument("--wallet-secret-file", type=Path, help="its master secret (0600); default $METANOIA_WALLET_SECRET")
    s.add_argument("--genesis", type=Path, help="the chain's genesis (chain id of manual orders)")
    s.add_argument("--validator", action="append", default=[], metavar="URL",
                   help="a validator's JSON-RPC URL (balances, chain status); repeat for each")
    s.add_argument("--outbox", action="append", default=[], type=Path, metavar="FILE",
                   help="a chain client outbox database besides --db (the market's fill transactions)")
    s.add_argument("--tariff", default="residential-low", help="the KEPCO table the bills use")
    s.add_argument("--secret-file", type=Path, help="the web server's secret (default DB.web-secret, created 0600)")
    s.add_argument("--proxy", action="append", default=[], metavar="IP",
                   help="a reverse proxy whose X-Forwarded-For is trusted for the client address (the per-address "
                        "limits); repeat for each; default: none")
    s.set_defaults(func=cmd_serve)

    a = wsub.add_parser("add-operator", help="create an operator account (utility staff)")
    a.add_argument("login", help="email or phone number")
    a.add_argument("--db", required=True, type=Path)
    a.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    a.add_argument("--secret-file", type=Path, help="the web server's secret (default DB.web-secret)")
    a.set_defaults(func=cmd_add_operator)

    k = wsub.add_parser("link-household", help="give a homeowner account a household whose meters are paired "
                                               "already (e.g. by the demo)")
    k.add_argument("login", help="the homeowner's email or phone number")
    k.add_argument("household")
    k.add_argument("--db", required=True, type=Path)
    k.add_argument("--secret-file", type=Path, help="the web server's secret (default DB.web-secret)")
    k.set_defaults(func=cmd_link_household)

    z = wsub.add_parser("reset-2fa", help="forget an account's authenticator (a lost phone) and sign it out "
                                          "everywhere; it enrols again at its next sign-in")
    z.add_argument("login")
    z.add_argument("--db", required=True, type=Path)
    z.add_argument("--secret-file", type=Path, help="the web server's secret (default DB.web-secret)")
    z.set_defaults(func=cmd_reset_2fa)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.market.wallet_policy import WalletError
    from gateway.web.app import Web
    from gateway.web.config import WebConfig, WebConfigError
    from gateway.web.readmodel import ReadModelError
    from gateway.web.sealing import SealError

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        print(f"metanoia gateway web serve: --listen must be HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        cfg = WebConfig(db=args.db, grid=args.grid, public_url=args.public_url or f"http://{args.listen}",
                        cookie_secure=not args.insecure_cookie, wallet_dir=args.wallet_dir,
                        wallet_secret_file=args.wallet_secret_file, genesis=args.genesis,
                        validators=tuple(args.validator), outbox_dbs=tuple(args.outbox), tariff=args.tariff,
                        secret_file=args.secret_file)
        web = Web(cfg)
        web.complex()  # opens the wallet now: a wrong master secret stops here, not on the first page
    except (WebConfigError, SealError, WalletError, ReadModelError, OSError) as exc:
        print(f"metanoia gateway web serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.getLogger("gateway.web").setLevel(logging.INFO)
    print(f"metanoia gateway web: serving {cfg.public_url} (grid {cfg.grid})", flush=True)
    uvicorn.run(web.app, host=host or "127.0.0.1", port=int(port), access_log=False, log_level="warning",
                proxy_headers=bool(args.proxy), forwarded_allow_ips=",".join(args.proxy) or None)
    return EXIT_OK


def _accounts(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway import db as gdb
    from gateway.web.accounts import Accounts
    from gateway.web.config import Argon2Cost
    from gateway.web.passwords import Hasher
    from gateway.web.sealing import Sealer, load_or_create_secret

    secret_path = args.secret_file or args.db.with_name(args.db.name + ".web-secret")
    return Accounts(gdb.connect(args.db), Hasher(Argon2Cost()), Sealer(load_or_create_secret(secret_path), b"totp"))


def cmd_link_household(args: argparse.Namespace) -> int:
    from gateway.web.accounts import AccountError
    from gateway.web.passwords import AccountInputError, normalise_login
    from gateway.web.sealing import SealError

    try:
        accounts = _accounts(args)
        account = accounts.by_login(normalise_login(args.login))
        if account is None:
            raise AccountError("unknown_account", f"no account {args.login}")
        accounts.link_household(account, args.household)
    except (AccountInputError, AccountError, SealError) as exc:
        print(f"metanoia gateway web link-household: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{account.login} is household {args.household}")
    return EXIT_OK


def cmd_reset_2fa(args: argparse.Namespace) -> int:
    from gateway.web.accounts import AccountError
    from gateway.web.passwords import AccountInputError, normalise_login
    from gateway.web.sealing import SealError
    from gateway.web.sessions import Sessions

    try:
        accounts = _accounts(args)
        account = accounts.by_login(normalise_login(args.login))
        if account is None:
            raise AccountError("unknown_account", f"no account {args.login}")
        accounts.reset_totp(account)
        Sessions(accounts.conn, idle_s=1, absolute_s=1, anon_s=1).delete_account(account.id)
    except (AccountInputError, AccountError, SealError) as exc:
        print(f"metanoia gateway web reset-2fa: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{account.login}: two-factor authentication reset, every session ended")
    return EXIT_OK


def cmd_add_operator(args: argparse.Namespace) -> int:
    from gateway.web.accounts import OPERATOR, AccountError
    from gateway.web.passwords import AccountInputError, normalise_login
    from gateway.web.sealing import SealError

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password for the operator: ")
        if getpass.getpass("again: ") != password:
            print("metanoia gateway web add-operator: the passwords differ", file=sys.stderr)
            return EXIT_FAILED
    try:
        account = _accounts(args).create(normalise_login(args.login), password, OPERATOR, int(time.time()))
    except (AccountInputError, AccountError, SealError) as exc:
        print(f"metanoia gateway web add-operator: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"operator {account.login} created (id {account.id}); sign in and turn on two-factor "
          "authentication before the operator view opens")
    return EXIT_OK
