"""`imgsim`: one command line for training, indexing and serving."""

from __future__ import annotations

import argparse
import logging
import sys

import indexer.cli
import service.cli
import service.jobs.cli
import training.cli
import training.dlib.cli
import training.pretrain_cli

# Each package adds its own subcommands; later packages may add more registrars here.
REGISTRARS = [training.cli.register, indexer.cli.register, service.cli.register,
              training.dlib.cli.register, training.pretrain_cli.register,
              service.jobs.cli.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgsim",
        description="Image similarity search: train embeddings (training/), build FAISS "
                    "indexes over a catalogue (indexer/), serve Verify/Search over gRPC (service/).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # faiss logs every instruction-set variant it fails to load at INFO: noise for users
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:  # missing files, busy ports, bad values
        print(f"imgsim {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # gRPC errors from the client commands
        import grpc

        if isinstance(e, grpc.RpcError):
            print(f"imgsim {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
