"""`python -m crispflow_airflow.db_setup`: `airflow db migrate`, then `airflow pools set` for each pool the DAGs
use (an upsert: safe to rerun), in one interpreter.

Each `airflow` command pays Airflow's start-up (10-15 s on a busy 2-core machine); running the commands through
Airflow's own command-line parser in one process pays it once. Same commands, same arguments, same effects as
typing them.
"""

from __future__ import annotations

from crispflow.pools import POOLS


def commands() -> list[list[str]]:
    """The `airflow` commands, in order."""
    return [["db", "migrate"], *(["pools", "set", name, str(slots), info] for name, slots, info in POOLS)]


def main() -> None:
    from airflow import configuration  # noqa: F401  (first, as airflow's own entry point does)
    from airflow.cli import cli_parser
    from airflow.configuration import write_default_airflow_configuration_if_needed

    parser = cli_parser.get_parser()
    write_default_airflow_configuration_if_needed()
    for argv in commands():
        print(f"airflow {' '.join(argv)}", flush=True)
        args = parser.parse_args(argv)
        args.func(args)


if __name__ == "__main__":
    main()
