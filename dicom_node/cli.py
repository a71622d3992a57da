"""``dicom-node``: the command line for running and operating the node."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_node import __version__
from dicom_node.config import ConfigError, NodeConfig, default_config_text, load_config
from dicom_node.queue import JOB_STATES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_CONFIGS = ("node.toml", "config/node.toml", "config/node.example.toml")


def _config_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("DICOM_NODE_CONFIG"):
        return Path(os.environ["DICOM_NODE_CONFIG"])
    for candidate in DEFAULT_CONFIGS:
        if Path(candidate).exists():
            return Path(candidate)
    raise ConfigError("no config file: pass --config, set DICOM_NODE_CONFIG, or run `dicom-node init node.toml`")


def _load(args: argparse.Namespace, *, check_routes: bool = True) -> tuple[NodeConfig, Path]:
    """The config for a command; ``check_routes`` also checks route match keys and pipelines against the
    router and the pipeline registry (which imports every pipeline): needed by the commands that route
    or run pipelines, not by those that only read the database or send files."""
    path = _config_path(args.config)
    if not check_routes:
        return load_config(path), path
    from dicom_node.intake.routing_check import load_checked_config

    return load_checked_config(path), path


def cmd_init(args: argparse.Namespace) -> int:
    target = Path(args.path)
    if target.exists() and not args.force:
        print(f"{target} exists; use --force to overwrite", file=sys.stderr)
        return 1
    storage = Path(args.storage).resolve() if args.storage else target.resolve().parent / "storage"
    text = re.sub(r'(?m)^storage = "[^"]*"', f'storage = "{storage}"', default_config_text(), count=1)
    target.write_text(text, encoding="utf-8")
    print(
        f"wrote {target}; edit AE titles, peers, destinations and routes, then `dicom-node check-config "
        f"--config {target}`"
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config, path = _load(args)
    node = config.node
    print(f"config {path}: OK")
    plain = "no plain DICOM" if config.tls is not None and node.port == 0 else f"listening on {node.host}:{node.port}"
    print(f"node      {node.ae_title} {plain}, storage {node.storage}")
    if config.tls is not None:
        tls = config.tls
        callers = "required" if tls.require_client_certificate else "optional"
        print(
            f"tls       DICOM TLS {tls.minimum_version}+ on {node.host}:{tls.port}, client certificates {callers}; "
            f"certificate {tls.certificate}"
        )
    print(f"database  {node.database_url()}")
    print(
        f"intake    quiet period {config.intake.quiet_period_s:g} s; workers {node.workers}; "
        f"duplicates {node.duplicate_policy.value}"
    )
    if config.peers:
        for peer in config.peers:
            bound = f", TLS certificate {peer.certificate_name!r} only" if peer.certificate_name else ""
            print(f"peer      {peer.ae_title}" + (f" from {peer.host}" if peer.host else " from any host") + bound)
    else:
        print(
            "peer      (none: "
            + ("any calling AE accepted" if node.accept_unknown_callers else "every association will be rejected")
            + ")"
        )
    for dest in config.destinations:
        print(
            f"dest      {dest.name}: {dest.ae_title}@{dest.host}:{dest.port}{' (TLS)' if dest.tls else ''} "
            f"gets {', '.join(dest.outputs)}; "
            f"retries for {dest.retry_for_hours:g} h"
        )
    for route in config.routes:
        match = ", ".join(f"{k}={v!r}" for k, v in route.match.items()) or "(everything)"
        outputs = ", ".join(route.outputs) if route.outputs is not None else "each destination's own"
        print(
            f"route     {route.name} [prio {route.priority}, wait for {route.wait_for}]: {match} -> "
            f"{' + '.join(route.pipelines)} -> {', '.join(route.destinations) or '(no destination)'} "
            f"({outputs})"
        )
    failed = 0
    if args.load:
        from dicom_node.worker import load_routed_pipelines

        for route_name, pipeline, error, seconds in load_routed_pipelines(config):
            state = f"loaded in {seconds:.1f} s" if error is None else f"CANNOT LOAD: {error}"
            print(f"pipeline  {pipeline} (route {route_name}): {state}")
            failed += error is not None
    if args.echo:
        from dicom_node.admin import echo_destination

        for dest in config.destinations:
            ok, message = echo_destination(config, dest.name)
            print(f"echo      {message}")
            failed += not ok
    return 1 if failed else 0


def cmd_route_test(args: argparse.Namespace) -> int:
    from pydicom import dcmread

    from dicom_node.intake.routing import check_routes, series_attributes

    config, _ = _load(args)
    files: list[Path] = []
    for item in args.files:
        p = Path(item)
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    for f in files:
        try:
            header = dcmread(f, stop_before_pixels=True)
        except Exception as exc:  # report and go on with the other files
            print(f"{f}: not readable as DICOM ({exc})")
            continue
        attrs = series_attributes(header, config, calling_ae=args.calling_ae, called_ae=config.node.ae_title)
        checks = check_routes(config, attrs)
        winners = [c.route.name for c in checks if c.matched]
        print(f"{f}: {'-> ' + ', '.join(winners) if winners else 'matches NO route (kept, listed as unrouted)'}")
        for check in checks:
            print(
                f"  {'+' if check.matched else '-'} {check.route.name}: {'; '.join(check.reasons) or 'no conditions'}"
            )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dicom_node.admin import status_report

    config, _ = _load(args, check_routes=False)
    report = status_report(config)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        from dicom_node.admin import format_status

        print(format_status(report))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from dicom_node import admin

    config, _ = _load(args, check_routes=False)
    if args.action == "list":
        for line in admin.list_jobs(config, state=args.state, limit=args.limit):
            print(line)
        return 0
    if args.id is None:
        print(f"jobs {args.action} needs a job id", file=sys.stderr)
        return 2
    ok, state = admin.change_job(config, args.id, args.action)
    if state is None:
        print(f"job {args.id}: no such job (`dicom-node jobs list` shows the jobs)", file=sys.stderr)
        return 1
    if not ok:
        allowed, done = {
            "retry": ("dead, failed or cancelled", "retried"),
            "rerun": ("succeeded", "re-run"),
            "cancel": ("queued, failed or running", "cancelled"),
        }[args.action]
        print(f"job {args.id} is {state}: only a {allowed} job can be {done}")
        return 1
    print(f"job {args.id}: {args.action} done (was {state})")
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    from dicom_node import admin
    from dicom_node.db import connect

    config, _ = _load(args, check_routes=False)
    engine = connect(config.node.database_url())
    try:
        if args.action == "list":
            rows = admin.delivery_rows(engine, state=args.state, destination=args.destination, limit=args.limit)
            print(f"{'id':>6} {'destination':<14} {'state':<8} {'att':>3} {'next try':<19} kind  last error")
            for r in rows:
                print(
                    f"{r['id']:>6} {r['destination']:<14} {r['state']:<8} {r['attempts']:>3} "
                    f"{r['next_try'] or '-':<19} {r['kind']:<5} {(r['last_error'] or '')[:80]}"
                )
            return 0
        if args.id is None:
            print("deliveries retry-now needs a delivery id", file=sys.stderr)
            return 2
        ok, state = admin.retry_delivery_now(engine, args.id, config=config)
    finally:
        engine.dispose()
    if state is None:
        print(f"delivery {args.id}: no such delivery (`dicom-node deliveries list` shows them)", file=sys.stderr)
        return 1
    if not ok:
        print(f"delivery {args.id} is {state}: only a pending or dead delivery can be retried")
        return 1
    print(f"delivery {args.id}: will be sent at the next tick (was {state})")
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dicom_node.admin import echo_destination

    config, _ = _load(args, check_routes=False)
    names = args.destinations or [d.name for d in config.destinations]
    if not names:
        print("no destinations in the config", file=sys.stderr)
        return 1
    failed = 0
    for name in names:
        ok, message = echo_destination(config, name)
        print(("ok    " if ok else "FAIL  ") + message)
        failed += not ok
    return 1 if failed else 0


def _read_password(from_stdin: bool) -> str | None:
    """A new password from stdin's first line or, on a terminal, typed twice; None (and a message) if unusable."""
    import getpass

    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return None
    if not password:
        print("error: empty password", file=sys.stderr)
        return None
    return password


def cmd_hash_password(args: argparse.Namespace) -> int:
    from dicom_node.web.auth import hash_password

    password = _read_password(args.stdin)
    if password is None:
        return 1
    print(hash_password(password))
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    """``user add NAME``: append a ``[[web.users]]`` table to the config file (checked before it is written)."""
    from dicom_node.config import parse_config
    from dicom_node.web.auth import hash_password

    path = _config_path(args.config)
    config = load_config(path)
    if args.action == "list":
        for user in config.web.users:
            print(user.name)
        return 0
    if any(u.name == args.name for u in config.web.users):
        print(f"error: {path} already has a user {args.name!r}", file=sys.stderr)
        return 1
    password = _read_password(args.stdin)
    if password is None:
        return 1
    text = path.read_text(encoding="utf-8")
    text += f'\n[[web.users]]\nname = "{args.name}"\npassword_hash = "{hash_password(password)}"\n'
    parse_config(text, path)  # a name the config refuses raises ConfigError here; nothing is written
    path.write_text(text, encoding="utf-8")
    print(f"added user {args.name} to {path}; a running node knows it after a reload (kill -HUP, or Reload)")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicom_node.net.scu import SendError, send_files

    tls_context = None
    if args.to:
        config, _ = _load(args, check_routes=False)
        dest = config.destination(args.to)
        host, port, aet = dest.host, dest.port, dest.ae_title
        calling = config.node.ae_title
        if dest.tls:  # DICOM TLS as the sender uses it
            from dicom_node.net.tls import client_context

            tls_context = client_context(dest, config.tls)
    else:
        if not (args.host and args.port and args.aec):
            print("send needs --to DEST (from the config) or --host, --port and --aec", file=sys.stderr)
            return 2
        host, port, aet, calling = args.host, args.port, args.aec, args.aet
    files: list[Path] = []
    for item in args.paths:
        p = Path(item)
        files.extend(
            sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
        )
    readable = []
    for f in files:
        try:
            from pydicom.misc import is_dicom

            if is_dicom(f):
                readable.append(f)
        except OSError:
            pass
    skipped = len(files) - len(readable)
    bar = tqdm(total=len(readable), unit="img", desc=f"to {aet}", disable=args.quiet)
    try:
        outcomes = send_files(
            readable,
            host=host,
            port=port,
            called_ae=aet,
            calling_ae=calling,
            progress=lambda _s: bar.update(1),
            tls=tls_context,
        )
    except SendError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    failed = [o for o in outcomes if not o.ok]
    print(
        f"sent {len(outcomes) - len(failed)} of {len(readable)} file(s)"
        + (f"; {skipped} non-DICOM file(s) skipped" if skipped else "")
    )
    for o in failed[:20]:
        print(f"  failed {o.path}: " + (o.error or f"status 0x{o.status or 0:04X}"))
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dicom_node.serve import Node, setup_logging

    from_file, path = _load(args)
    if args.log_format:
        os.environ["DICOM_NODE_LOG_FORMAT"] = args.log_format  # inherited by the spawned processes
    setup_logging(args.log_level)
    config = from_file
    if args.workers is not None:
        config = config.model_copy(update={"node": config.node.model_copy(update={"workers": args.workers})})
    try:
        Node(config, log_level=args.log_level, config_path=path, from_file=from_file).serve_forever()
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        node = config.node
        print(f"error: cannot listen on {node.host}:{node.port}: {exc.strerror}. ", end="", file=sys.stderr)
        print("Another program (a PACS, another node) may hold the port: set [node] port.", file=sys.stderr)
        return 1
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import multiprocessing as mp

    from dicom_node.serve import setup_logging, worker_main

    config, _ = _load(args)
    if args.log_format:
        os.environ["DICOM_NODE_LOG_FORMAT"] = args.log_format
    setup_logging(args.log_level)
    if args.count <= 1:
        worker_main(config.model_dump_json(), 0, args.log_level)
        return 0
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=worker_main, args=(config.model_dump_json(), i, args.log_level)) for i in range(args.count)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return 0


TRAINABLE = {
    "ct-lung-nodule": ("dicom_node.training.ct_lung_nodule", "models/ct_lung_nodule"),
    "us-lung": ("dicom_node.training.us_lung", "models/us_lung"),
    "pet-tumour": ("dicom_node.training.pet_tumour.command", "models/pet_tumour"),
}


def cmd_train(args: argparse.Namespace) -> int:
    import importlib

    module_name, _ = TRAINABLE[args.model]
    module = importlib.import_module(module_name)
    out = Path(args.out)  # required: training never writes into the shipped bundle unless that path is named
    extra = {"minutes": args.minutes, "resume": args.resume} if args.model == "pet-tumour" else {}
    metrics = module.train(out, seed=args.seed, quick=args.quick, progress=not args.quiet, **extra)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import importlib

    module_name, default_dir = TRAINABLE[args.model]
    if args.real is not None:
        return _evaluate_real(args, default_dir)
    module = importlib.import_module(module_name)
    extra: dict[str, Any] = {}
    if args.model == "pet-tumour":
        from dicom_node.training.pet_tumour.data import parse_seed_list

        extra = {"seeds": parse_seed_list(args.seeds) if args.seeds else None}
    metrics = module.evaluate(Path(args.bundle or default_dir), seed=args.seed, **extra)
    print(json.dumps(metrics, indent=2, default=str))
    return 0


def _evaluate_real(args: argparse.Namespace, default_dir: str | Path) -> int:
    """``evaluate ct-lung-nodule|us-lung --real [DIR]``: the pipeline on every real case in DIR, one line each."""
    if args.model == "us-lung":
        from dicom_node.training.us_real_report import evaluate_real_command

        return evaluate_real_command(args.real, args.bundle or default_dir, args.png)
    if args.model != "ct-lung-nodule":
        print(f"error: --real is available for ct-lung-nodule and us-lung only, not {args.model}", file=sys.stderr)
        return 2
    from dicom_node.pipelines.ct_lung_nodule import CtLungNodule
    from dicom_node.training.ct_lung_nodule.data import REAL_DIR
    from dicom_node.training.ct_lung_nodule.real import evaluate_real_scans

    real_dir = Path(args.real) if args.real else REAL_DIR
    if not real_dir.is_dir():
        print(f"error: no real data folder at {real_dir}", file=sys.stderr)
        return 2
    pipeline = CtLungNodule(bundle=str(args.bundle or default_dir))
    results = evaluate_real_scans(pipeline, real_dir, png_dir=Path(args.png) if args.png else None)
    for name, e in results.items():
        if e.get("not_applicable"):
            print(f"{name}: not applicable ({e['not_applicable']})")
            continue
        overlap = f", Dice {e['dice']}" if "dice" in e else ""
        print(
            f"{name}: lesion {'found' if e['lesion_found'] else 'MISSED'}{overlap}, "
            f"{e['false_positives']} false positive(s), {e['nodules_outside_lung']} nodule(s) outside the lungs, "
            f"{e['seconds']} s"
        )
    print(json.dumps(results, indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            "-c",
            help="config file (default: $DICOM_NODE_CONFIG, ./node.toml, config/node.toml, config/node.example.toml)",
        )
        return p

    p = with_config(sub.add_parser("serve", help="run the node: receiver, scheduler, workers, sender"))
    p.add_argument("--workers", type=int, help="override node.workers")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects")
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("worker", help="run worker processes only (scale-out on PostgreSQL)"))
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    p.add_argument("--log-format", choices=["text", "json"], help="log lines as text (default) or JSON objects")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("init", help="write a starter config")
    p.add_argument("path", nargs="?", default="node.toml")
    p.add_argument("--storage", help="data folder (default: storage/ beside the config file)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)

    p = with_config(sub.add_parser("check-config", help="validate and print AE titles, destinations, routes"))
    p.add_argument(
        "--no-load", dest="load", action="store_false", help="do not load the routed pipelines' models (faster)"
    )
    p.add_argument("--echo", action="store_true", help="also C-ECHO every destination")
    p.set_defaults(func=cmd_check_config)

    p = with_config(sub.add_parser("route-test", help="which route matches each file, and why"))
    p.add_argument("files", nargs="+")
    p.add_argument("--calling-ae", default="", help="pretend the files came from this calling AE")
    p.set_defaults(func=cmd_route_test)

    p = with_config(sub.add_parser("status", help="queue and delivery counts, dead jobs, unrouted series"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = with_config(sub.add_parser("jobs", help="list, retry, re-run or cancel jobs"))
    p.add_argument("action", choices=["list", "retry", "rerun", "cancel"])
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)

    p = with_config(sub.add_parser("deliveries", help="list deliveries, or send one again now"))
    p.add_argument("action", choices=["list", "retry-now"])
    p.add_argument("id", nargs="?", type=int)
    p.add_argument("--state", choices=["pending", "sent", "dead"], help="only deliveries in this state")
    p.add_argument("--destination", help="only this destination")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_deliveries)

    p = with_config(sub.add_parser("echo", help="C-ECHO configured destinations (default: all of them)"))
    p.add_argument("destinations", nargs="*", metavar="DEST")
    p.set_defaults(func=cmd_echo)

    p = with_config(sub.add_parser("user", help="list the web users, or add one to the config file"))
    p.add_argument("action", choices=["add", "list"])
    p.add_argument("name", nargs="?", default="")
    p.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    p.set_defaults(func=cmd_user)

    p = sub.add_parser("hash-password", help="print a password hash for [[web.users]] password_hash")
    p.add_argument("--stdin", action="store_true", help="read the password from the first line of stdin")
    p.set_defaults(func=cmd_hash_password)

    p = with_config(sub.add_parser("send", help="C-STORE files or folders to a destination"))
    p.add_argument("paths", nargs="+")
    p.add_argument("--to", help="destination name from the config")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--aec", help="called AE title")
    p.add_argument("--aet", default="DICOM_NODE", help="calling AE title (with --host)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_send)

    _add_model_commands(sub)
    return parser


def _add_model_commands(sub: Any) -> None:
    """``train`` and ``evaluate``: the model commands."""
    p = sub.add_parser("train", help="train a shipped model and write its bundle")
    p.add_argument("model", choices=sorted(TRAINABLE))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="bundle folder to write (never the shipped one unless named)")
    p.add_argument("--quick", action="store_true", help="a tiny run, for smoke tests")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--minutes", type=float, default=25.0, help="pet-tumour: minutes of training (wall time)")
    p.add_argument("--resume", metavar="DIR", help="pet-tumour: start from the weights of this bundle")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model bundle on held-out synthetic data")
    p.add_argument("model", choices=sorted(TRAINABLE))
    p.add_argument("--bundle", help="bundle folder (default models/<name>)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument(
        "--real",
        nargs="?",
        const="",
        metavar="DIR",
        help="ct-lung-nodule: run the pipeline on the real chest CT in DIR (default ../shared/data/real) instead; "
        "us-lung: on the real lung-US clips in DIR (default ../shared/data/real/us_pocus_ccby), per clip and "
        "summed per split part, plus the non-lung US that must be refused",
    )
    p.add_argument("--png", metavar="DIR", help="with --real: one PNG per scan (per clip for us-lung)")
    p.add_argument(
        "--seeds",
        metavar="LIST",
        help="pet-tumour: phantom seeds to score, e.g. 5000-5002 (default the held-out 5000-5011, which alone "
        "rewrite the bundle's metrics and card)",
    )
    p.set_defaults(func=cmd_evaluate)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: unknown name {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
