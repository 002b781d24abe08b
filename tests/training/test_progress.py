"""training.progress: a bar on a terminal; periodic plain lines (done/total, rate, ETA, postfix)
in a log, CI or `docker logs`, where tqdm's disable=None printed nothing at all."""

import io
import logging

from tqdm import tqdm

from training.progress import LogProgress, progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "training.progress"]


def test_not_a_terminal_logs_a_line_every_interval_with_count_rate_eta_and_postfix(caplog):
    caplog.set_level(logging.INFO, logger="training.progress")
    clock, stream = FakeClock(), io.StringIO()
    bar = progress(range(10), desc="epoch 1/4", unit="step", stream=stream, interval=10.0,
                   clock=clock)
    assert isinstance(bar, LogProgress)
    for i in bar:
        clock.now += 4.0  # each step takes 4 s: a line after steps 3, 6 and 9 (12 s apart)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
    lines = _lines(caplog)
    assert lines == [
        "epoch 1/4: 3/10 step (30%), 0.2 step/s, ETA 0:28, loss=0.3333",
        "epoch 1/4: 6/10 step (60%), 0.2 step/s, ETA 0:16, loss=0.1667",
        "epoch 1/4: 9/10 step (90%), 0.2 step/s, ETA 0:04, loss=0.1111",
        "epoch 1/4: 10/10 step (100%), 0.2 step/s, done in 0:40, loss=0.1000",
    ]
    assert stream.getvalue() == ""  # no bar drawn into a log


def test_update_counts_from_initial_and_short_work_stays_silent(caplog):
    caplog.set_level(logging.INFO, logger="training.progress")
    clock = FakeClock()
    with progress(total=1000, initial=400, desc="embed", unit="img", stream=io.StringIO(),
                  clock=clock) as bar:
        clock.now += 3.0
        bar.update(100)  # under the interval: nothing yet
        assert _lines(caplog) == []
        clock.now += 7.0
        bar.update(100)  # rate over the images done here, not the 400 already done
    assert _lines(caplog) == ["embed: 600/1000 img (60%), 20.0 img/s, ETA 0:20",
                              "embed: 600/1000 img (60%), 20.0 img/s, done in 0:10"]
    caplog.clear()
    with progress(total=5, desc="quick", stream=io.StringIO(), clock=clock) as bar:
        bar.update(5)
    assert _lines(caplog) == []


def test_a_terminal_gets_the_tqdm_bar_and_no_log_lines(caplog):
    caplog.set_level(logging.INFO, logger="training.progress")
    term = Terminal()
    bar = progress(range(3), desc="epoch 1/1", unit="step", stream=term, mininterval=0)
    assert isinstance(bar, tqdm)
    for _ in bar:
        bar.set_postfix(loss="0.1")
    out = term.getvalue()
    assert "epoch 1/1" in out and "3/3" in out and "\r" in out
    assert _lines(caplog) == []


def test_disabled_is_silent_on_a_terminal_and_off_it(caplog):
    caplog.set_level(logging.INFO, logger="training.progress")
    clock, term = FakeClock(), Terminal()
    for stream in (term, io.StringIO()):
        bar = progress(total=10, desc="x", enabled=False, stream=stream, clock=clock)
        clock.now += 1e6
        bar.update(10)
        bar.close()
    assert term.getvalue() == "" and _lines(caplog) == []


def test_training_loop_reports_progress_when_stderr_is_not_a_terminal(caplog, monkeypatch):
    """fit's epoch bar goes through the helper: off a terminal, its lines carry the loss."""
    import torch

    from training import progress as progress_mod
    from training.engine.callbacks import TrainState
    from training.engine.train import fit

    ticks = iter(range(0, 10_000, 20))  # every clock reading is 20 s later than the last
    monkeypatch.setattr(progress_mod, "CLOCK", lambda: float(next(ticks)))
    monkeypatch.setattr(progress_mod.sys, "stderr", io.StringIO())
    caplog.set_level(logging.INFO, logger="training.progress")

    class Loss(torch.nn.Module):
        last_active = last_total = 1

        def forward(self, emb, y, indices):
            return emb.pow(2).mean()

    model = torch.nn.Linear(2, 2)
    state = TrainState(model=model, spec=None,
                       optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    loader = [(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))] * 3
    fit(state, loader, Loss(), lambda e, y: None, epochs=1)
    lines = _lines(caplog)
    assert lines and all(line.startswith("epoch 1/1: ") for line in lines)
    assert "3/3 step (100%)" in lines[-1] and "loss=" in lines[-1]
