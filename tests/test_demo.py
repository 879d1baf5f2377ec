"""`python -m pararnn.demo`: it says what it timed and prints a ratio only when it means something."""

from pararnn.demo import _ratio_text, main


def timings(seq, par):
    """Result fields for the forward row from (fastest, median, slowest) of each mode."""
    return {"sequential_fwd_range_s": (seq[0], seq[2]), "parallel_fwd_range_s": (par[0], par[2]),
            "speedup_fwd": seq[1] / par[1]}


def test_ratio_only_where_the_runs_separate():
    assert _ratio_text(timings((1.0, 1.2, 1.5), (1.4, 1.6, 2.0)), "fwd") == "runs overlap"
    assert _ratio_text(timings((0.30, 0.31, 0.33), (0.10, 0.11, 0.12)), "fwd") == "2.8x faster"
    # a parallel call 23 times slower reads as such, never as "0.0x"
    assert _ratio_text(timings((0.010, 0.010, 0.011), (0.20, 0.23, 0.25)), "fwd") == "23x slower"


def test_demo_reports_what_it_measured(capsys):
    main(["--batch", "1", "--steps", "16", "--hidden", "8", "--repeats", "2"])
    out = capsys.readouterr().out
    assert "median of 2 runs after a warm-up" in out and "torch threads:" in out
    assert "load average" in out and "vary from run to run" in out
    assert "0.0x" not in out
    error = float(out.split("max |parallel - sequential| output: ")[1].split(";")[0])
    assert error < 1e-5
