"""The MicroPython runtime the firmware tests rely on is the real interpreter."""


def test_micropython_runs_code_and_reports_its_implementation(mp):
    out = mp("import sys; print(sys.implementation.name)").stdout.strip()
    assert out == "micropython"


def test_micropython_exception_surfaces_with_traceback(mp):
    from hil.micropython_node import MicroPythonError
    import pytest

    with pytest.raises(MicroPythonError) as err:
        mp("raise ValueError('boom')")
    assert "ValueError: boom" in err.value.traceback
