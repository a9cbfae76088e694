"""`fengqiao bench flood`: another device's alarm while one or ten devices flood the broker (issue 13).

Helpers shared with the tests: flood(broker, device_id, key) starts a raw flooder (mosquitto_pub,
QoS 0 at full loopback speed, its password passed in a 0600 file, never on the command line).
"""

import os
import shutil
import subprocess
import tempfile

HELP = "victim alarm ack/siren latency before, during and after a flood of 1 and 10 devices; time to quarantine"

FLOOD_PAYLOAD = "f" * 48     # about the size of a real frame; not a frame: it never gets that far


class Flooder:
    """mosquitto_pub --repeat at QoS 0, repeat-delay 0: as fast as the C client and loopback go."""

    def __init__(self, port, username, password, topic, count=100_000_000):
        exe = shutil.which("mosquitto_pub")
        if exe is None:
            raise FileNotFoundError("mosquitto_pub not found (apt-get install mosquitto-clients)")
        self._dir = tempfile.TemporaryDirectory(prefix="fq-flood-")
        # mosquitto_pub reads its options from $XDG_CONFIG_HOME/mosquitto_pub too: the password
        # stays out of the process list.
        fd = os.open(os.path.join(self._dir.name, "mosquitto_pub"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("-h 127.0.0.1\n-p %d\n-u %s\n-P %s\n" % (port, username, password))
        env = dict(os.environ, XDG_CONFIG_HOME=self._dir.name)
        self.proc = subprocess.Popen([exe, "-t", topic, "-q", "0", "-m", FLOOD_PAYLOAD, "--repeat", str(count),
                                      "--repeat-delay", "0", "--quiet"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def running(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._dir.cleanup()
