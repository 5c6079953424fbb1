"""The HTML report of ``salience explain`` (Jinja2 template, PNGs, raw maps, JSON)."""

from .render import (
    ImageEntry,
    OutputDirError,
    check_output_dir,
    run_status,
    safe_names,
    write_report,
)

__all__ = ["ImageEntry", "OutputDirError", "check_output_dir", "run_status", "safe_names",
           "write_report"]
