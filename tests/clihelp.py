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


def assert_one_line_error(args, capsys, expected: str) -> None:
    """The CLI fails as bad input must: exit code 2 and one line on stderr naming the problem, no traceback."""
    code, _, err = run_cli(args, capsys)
    assert code == 2 and expected in err and "Traceback" not in err, (code, err)
    assert len(err.strip().splitlines()) == 1, err
