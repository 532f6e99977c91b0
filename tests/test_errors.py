"""The one-line error summaries that status, run and tune print, and errors crossing processes."""

import pickle

from synthmix.errors import StudyError, headline


def test_headline_is_the_first_line() -> None:
    assert headline("ValueError: bad spacing\nTraceback ...") == "ValueError: bad spacing"
    assert headline("  \n") == ""


def test_a_first_line_announcing_the_cause_takes_the_cause_with_it() -> None:
    ray_text = "ControllerError: Training failed due to controller error:\n\nOSError: disk full\nmore"
    assert headline(ray_text) == "ControllerError: Training failed due to controller error: OSError: disk full"
    assert headline("Problem:") == "Problem:"


def test_a_study_error_survives_pickling_as_a_ray_worker_error_does():
    err = pickle.loads(pickle.dumps(StudyError(["channels: must be positive", "attention: wrong"], source="generator config")))
    assert isinstance(err, StudyError) and err.problems == ["channels: must be positive", "attention: wrong"]
    assert str(err).splitlines()[0] == "generator config: 2 problem(s)"
