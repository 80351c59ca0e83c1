"""Progress on stderr: periodic plain lines off a terminal, a redrawn bar on one, silence on ask."""

from __future__ import annotations

import io

from graft.core.progress import Progress, format_seconds, say


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_off_a_terminal(monkeypatch):
    monkeypatch.setenv("GRAFT_PROGRESS_EVERY", "0")  # a line per update
    out = io.StringIO()
    with Progress("features: embedding", total=4, unit="img", stream=out) as bar:
        for _ in range(4):
            bar.update(1, loss=0.5)
    lines = out.getvalue().splitlines()
    assert lines[0] == "features: embedding: started, 4 img"
    assert lines[1].startswith("features: embedding: 1/4 img (25%)") and "ETA" in lines[1]
    assert "loss 0.5" in lines[1]
    assert lines[-1].startswith("features: embedding: 4 img in ")
    assert "\r" not in out.getvalue()


def test_quiet_between_intervals(monkeypatch):
    monkeypatch.setenv("GRAFT_PROGRESS_EVERY", "3600")
    out = io.StringIO()
    with Progress("step", total=1000, stream=out) as bar:
        for _ in range(1000):
            bar.update()
    assert len(out.getvalue().splitlines()) == 2  # started, done: nothing in between


def test_a_terminal_gets_one_redrawn_bar():
    out = Tty()
    with Progress("export: scoring", total=2, unit="img", stream=out) as bar:
        bar.update(2)
    text = out.getvalue()
    assert "\r\x1b[2K" in text and "[" in text and text.endswith("\n")
    assert text.count("\n") == 1


def test_slow_steps_show_seconds_per_unit():
    progress = Progress("finetune: training", total=10, unit="epoch", stream=io.StringIO())
    progress.done = 1
    assert "s/epoch" in progress.line(progress.started + 12.0)


def test_failed_step_says_so_and_silence_on_request(monkeypatch, capsys):
    out = io.StringIO()
    try:
        with Progress("evaluate", total=3, stream=out) as bar:
            bar.update()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "stopped after 1" in out.getvalue().splitlines()[-1]
    monkeypatch.setenv("GRAFT_PROGRESS", "0")
    quiet = io.StringIO()
    with Progress("x", total=1, stream=quiet) as bar:
        bar.update()
    say("ingest: 3 images")
    assert quiet.getvalue() == "" and capsys.readouterr().err == ""


def test_format_seconds():
    assert [format_seconds(s) for s in (42, 185, 3720)] == ["42 s", "3 min 05 s", "1 h 02 min"]
