"""The one-line error summaries that status, run and tune print."""

from synthmix.errors import headline


def test_headline_is_the_first_line() -> None:
    assert headline("ValueError: bad spacing\nTraceback ...") == "ValueError: bad spacing"
    assert headline("  \n") == ""


def test_a_first_line_announcing_the_cause_takes_the_cause_with_it() -> None:
    ray_text = "ControllerError: Training failed due to controller error:\n\nOSError: disk full\nmore"
    assert headline(ray_text) == "ControllerError: Training failed due to controller error: OSError: disk full"
    assert headline("Problem:") == "Problem:"
