"""Run the `medfake` CLI in-process the way a shell would see it."""

from medfake.cli import main


def run_cli(args, capsys=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); stdout/stderr are empty strings without `capsys`."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err
