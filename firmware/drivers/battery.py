# Battery voltage: ADC counts to millivolts, a small median filter against ADC noise and radio
# bursts, and a low-battery threshold with hysteresis so one crossing gives one event.

from micropython import const

LOW = const(1)
OK = const(2)


def raw_to_mv(raw_u16, divider, vref_mv=3300):
    """machine.ADC.read_u16() counts (0..65535) -> battery mV behind a resistor divider."""
    return int(raw_u16 * vref_mv * divider / 65535 + 0.5)


class Battery:
    def __init__(self, read_mv, low_mv=3400, hysteresis_mv=100, samples=5):
        self._read = read_mv
        self.low_mv = low_mv
        self.hysteresis_mv = hysteresis_mv
        self._buf = []
        self._n = samples
        self.is_low = False
        self.mv = None

    def sample(self):
        self._buf.append(int(self._read()))
        if len(self._buf) > self._n:
            self._buf.pop(0)
        s = sorted(self._buf)
        self.mv = s[len(s) // 2]
        return self.mv

    def poll(self):
        """Take a sample; LOW once when the filtered value drops below low_mv, OK once when it
        rises above low_mv + hysteresis_mv; None otherwise."""
        mv = self.sample()
        if not self.is_low and mv < self.low_mv:
            self.is_low = True
            return LOW
        if self.is_low and mv >= self.low_mv + self.hysteresis_mv:
            self.is_low = False
            return OK
        return None
