"""The command line: ``python -m demo.study export NAME``, ``results NAME``, ``list``, ``validate FILE``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.settings import Settings, choose_journal_mode
from ..core.storage import Store
from .definition import StudyError, load_definition_file
from .results import compute_results, write_export
from .store import StudyStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.study", description="PPlug Studio user studies.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write a study's trials with votes as CSV and JSONL")
    export.add_argument("name")
    export.add_argument("--out", default=".", help="folder for the files (default: here)")
    export.add_argument("--format", choices=["csv", "jsonl", "both"], default="both")
    results = sub.add_parser("results", help="print a study's results table")
    results.add_argument("name")
    results.add_argument("--completed-only", action="store_true")
    sub.add_parser("list", help="list the studies in the database")
    validate = sub.add_parser("validate", help="check a study file")
    validate.add_argument("file")
    for p in (export, results, sub.choices["list"]):
        p.add_argument("--db", help="database file (default: PPLUG_DB or the app's default)")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            d = load_definition_file(args.file)
            print(f"{args.file}: study `{d.name}` is valid ({len(d.conditions)} conditions, "
                  f"{d.trials_per_participant} trials per participant).")
            return 0
        db_path = Path(args.db) if args.db else Settings.from_env().db_path
        if not db_path.is_file():
            raise StudyError(f"No database at {db_path}.")
        with Store(db_path, journal_mode=choose_journal_mode(db_path)) as store:
            studies = StudyStore(store)
            if args.command == "list":
                for s in studies.studies():
                    print(f"{s['study']}\tv{s['version']}\t{s['participants']} participants\t"
                          f"{s['completed']} completed\t{s['votes']}/{s['trials']} trials voted")
                return 0
            found = studies.definition(args.name)
            if found is None:
                raise StudyError(f"There is no study called {args.name!r} in {db_path}.")
            rows = studies.export_rows(args.name)
            if args.command == "results":
                print(compute_results(rows, list(found[1].conditions), args.completed_only, study=args.name).markdown())
                return 0
            formats = ("csv", "jsonl") if args.format == "both" else (args.format,)
            for path in write_export(rows, args.out, args.name, formats):
                print(f"wrote {path} ({len(rows)} trials)")
            return 0
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
