"""Where a run's wall time goes (richft_jax/timing.py): phases that add up to the elapsed time,
waits of an iterator, JAX's compilation time, the process's age."""

import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from richft_jax import timing


def test_phases_add_up_to_the_elapsed_time_nested_phases_subtracted():
    phases = timing.Phases()
    with phases("outer"):
        time.sleep(0.05)
        with phases("inner"):
            time.sleep(0.1)
    with phases("outer"):  # Phases accumulate.
        time.sleep(0.05)
    time.sleep(0.05)  # In no phase: "other".
    s = phases.summary()
    assert s["inner"] == pytest.approx(0.1, abs=0.05)
    assert s["outer"] == pytest.approx(0.1, abs=0.05)  # Without the inner 0.1.
    assert s["other"] == pytest.approx(0.05, abs=0.05)
    elapsed = s["inner"] + s["outer"] + s["other"]
    assert s["total"] == pytest.approx(elapsed, abs=0.02)


def test_an_in_process_run_has_no_startup_its_total_is_the_time_since_it_began():
    # In a notebook or pytest the process's age is not the run's: no startup phase.
    phases = timing.Phases()
    time.sleep(0.05)
    s = phases.summary()
    assert "startup" not in s
    assert s["total"] == pytest.approx(0.05, abs=0.04)
    assert s["total"] == pytest.approx(s["other"], abs=0.02)


def test_the_entry_points_startup_is_a_phase_and_in_the_total():
    phases = timing.Phases(startup_s=8.0)  # main.py: the process's age when the run began.
    time.sleep(0.05)
    s = phases.summary()
    assert s["startup"] == 8.0
    assert s["total"] == pytest.approx(8.0 + s["other"], abs=0.02)


def test_timed_iter_counts_the_waits_for_each_item_not_the_work_between():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    phases = timing.Phases()
    got = []
    for item in phases.timed_iter(slow(), "input"):
        with phases("work"):
            time.sleep(0.02)
        got.append(item)
    assert got == [0, 1, 2]
    s = phases.summary()
    assert s["input"] == pytest.approx(0.15, abs=0.06)
    assert s["work"] == pytest.approx(0.06, abs=0.05)


def test_compile_seconds_count_jax_compilations():
    timing.listen_for_compiles()
    timing.listen_for_compiles()  # Once per process, however often called.
    before = timing.compile_seconds()
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0 + 1.7)
    f(jnp.ones((37, 29))).block_until_ready()  # A new function: traced and compiled.
    first = timing.compile_seconds()
    assert first > before
    f(jnp.ones((37, 29))).block_until_ready()  # Cached in memory: nothing compiled.
    assert timing.compile_seconds() == first


def test_process_age_is_the_time_since_the_process_started():
    code = (
        "import time; time.sleep(0.5); from richft_jax import timing; print(timing.process_age_s())"
    )
    age = float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert 0.5 <= age < 30


def test_breakdown_line_lists_the_given_phases_first_then_the_largest():
    line = timing.breakdown_line(
        {
            "train_steps": 50.0,
            "eval": 5.0,
            "startup": 8.0,
            "other": 1.0,
            "total": 64.0,
            "compile_within": 2.5,
        },
        ("train_steps",),
    )
    assert line == (
        "time 64.0 s = train steps 50.0 + startup 8.0 + eval 5.0 + other 1.0 "
        "(JAX compilation within them: 2.5 s)"
    )
