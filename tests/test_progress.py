"""Progress output: a bar on a terminal, plain lines at most once per interval in a log, nothing when disabled."""
import io

import pytest
from tqdm import tqdm

from regtune.config import DataConfig
from regtune.data.dataset import load_folder
from regtune.progress import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_disabled_is_none():
    assert progress(False, 10, "x", "step") is None


@pytest.mark.parametrize("interval, n_lines", [(0.0, 5), (3600.0, 0)])
def test_log_stream_gets_plain_lines_at_most_once_per_interval(interval, n_lines):
    log = io.StringIO()
    p = progress(True, 5, "evaluating", "pair", interval=interval, stream=log)
    for _ in range(5):
        p.update(1)
    p.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == n_lines
    if n_lines:
        assert lines[-1].startswith("evaluating: 5/5 pairs, ")


def test_terminal_gets_a_tqdm_bar():
    p = progress(True, 3, "loading", "vol", stream=_Tty())
    assert isinstance(p, tqdm)
    p.close()


def test_loading_into_a_log_writes_no_bar(synth_dir, capsys):
    load_folder(synth_dir, DataConfig(), progress=True)
    assert "\r" not in capsys.readouterr().err
