"""The `cryptobt` command line: parses, calls the pipeline, prints. Nothing else lives here.

One module per command group (Typer sub-apps); `root` assembles them into `app` and holds `main`.
"""

from pipeline.cli.root import app, main

__all__ = ["app", "main"]
