"""The command line: argparse subcommands."""
