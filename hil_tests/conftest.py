"""Hardware-in-the-loop tests: real firmware, a real Mosquitto with the project's configuration,
the real gateway.

By default the firmware runs on the *host board* (the MicroPython Unix port, flash as a directory,
buttons and cards driven through its control socket). With `--hil-port /dev/ttyACM0` the same tests
target a real board on that serial port; tests that need a capability only the host board has (its
control channel: pressing the button without a person, kill -9) say so when they skip.
"""

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--hil-port",
        default=None,
        help="serial port of a real provisioned board to run the HIL tests on (default: host board)",
    )


@pytest.fixture(scope="session")
def hil_port(request):
    return request.config.getoption("--hil-port")
