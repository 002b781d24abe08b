"""`imgsim`: one command line for training, indexing and serving."""

from __future__ import annotations

import argparse
import logging
import sys

import imgsim.config_cli
import indexer.cli
import indexer.stores.cli
import service.cli
import service.jobs.cli
import training.cli
import training.dlib.cli
import training.pretraining.cli

# Each package adds its own subcommands; later packages may add more registrars here.
REGISTRARS = [training.cli.register, indexer.cli.register, service.cli.register,
              training.dlib.cli.register, training.pretraining.cli.register,
              service.jobs.cli.register, indexer.stores.cli.register,
              imgsim.config_cli.register]


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose flags may be added when it is first used.

    ``sub.add_parser(name, help=..., arguments=fn)`` defers ``fn(parser)`` until the parser
    parses, prints help or is inspected (anything that reads its actions), so that a registrar
    whose choices come from torch-importing registries (losses, backbones...) costs nothing
    for `imgsim --help` and the client commands."""

    def __init__(self, *args, arguments=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pending_arguments = arguments

    @property
    def _actions(self) -> list[argparse.Action]:
        pending = self.__dict__.pop("_pending_arguments", None)
        if pending is not None:
            pending(self)
        return self.__dict__["_action_list"]

    @_actions.setter
    def _actions(self, value: list[argparse.Action]) -> None:
        self.__dict__["_action_list"] = value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="imgsim",
        description="Image similarity search: train embeddings (training/), build FAISS "
                    "indexes over a catalogue (indexer/), serve Verify/Search over gRPC (service/).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """'imgsim index build', 'imgsim jobs run': the command and its subcommand, for messages."""
    subs = [v for k, v in vars(args).items() if k.endswith("_command") and isinstance(v, str)]
    return " ".join(["imgsim", args.command, *subs])


def _no_alembic_context_lines(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Context impl", "Will assume"))


def _one_line(e: BaseException) -> str:
    return " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss logs every instruction-set variant it fails to load at INFO: noise for users
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # Alembic says which dialect it uses each time a catalogue is opened; keep its migrations
    logging.getLogger("alembic.runtime.migration").addFilter(_no_alembic_context_lines)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # "setup plugin ..."
    name = command_name(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    # missing files, busy ports, bad values, bad checkpoints (training.checkpoint.CheckpointError)
    except (OSError, ValueError) as e:
        print(f"{name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # gRPC errors from the client commands, an unreachable database
        import grpc
        from sqlalchemy.exc import ArgumentError, DBAPIError

        if isinstance(e, grpc.RpcError):
            print(f"{name}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        if isinstance(e, ArgumentError):  # a --catalog that is not a database URL
            print(f"{name}: error: {_one_line(e)} (check --catalog, IMGSIM_CATALOG_URL or the "
                  f"server's catalog_url)", file=sys.stderr)
            return 2
        if isinstance(e, DBAPIError):  # the driver's words, not SQLAlchemy's traceback
            reason = _one_line(e.orig if e.orig is not None else e)
            print(f"{name}: error: catalogue database: {reason} (check --catalog, "
                  f"IMGSIM_CATALOG_URL or the server's catalog_url)", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
