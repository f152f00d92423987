"""Third-party warnings and log records go to the step's log file, not the terminal
(``log_routing.py``)."""
from __future__ import annotations

import logging
import warnings

from threestudio_dreambooth3d.log_routing import warnings_to_log


def test_warnings_to_log_moves_third_party_warnings_off_the_terminal(tmp_path, capsys):
    from threestudio_dreambooth3d.cli import configure_logging

    configure_logging(0)
    log = tmp_path / "run.log"
    with warnings_to_log(log):
        warnings.warn("torch.cuda.amp.autocast is deprecated", UserWarning)
        logging.getLogger("transformers.modeling_utils").warning("some weights were not used")
        logging.getLogger("threestudio_dreambooth3d.pipeline").warning("our own warning stays visible")
    err = capsys.readouterr().err
    assert "deprecated" not in err and "weights were not used" not in err
    assert "our own warning stays visible" in err
    text = log.read_text()
    assert "UserWarning: torch.cuda.amp.autocast is deprecated" in text
    assert "WARNING transformers.modeling_utils: some weights were not used" in text
    assert "our own warning stays visible" in text
    logging.getLogger("transformers.modeling_utils").warning("after the block: shown again")
    assert "after the block: shown again" in capsys.readouterr().err


def test_warnings_to_log_creates_nothing_without_an_output_folder(tmp_path):
    with warnings_to_log(tmp_path / "missing" / "run.log"):
        warnings.warn("early warning", UserWarning)
    assert not (tmp_path / "missing").exists()
