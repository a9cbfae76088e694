# Battery voltage: a small median filter (5 samples) against ADC noise and radio bursts, and a
# low-battery threshold with 100 mV of hysteresis so one crossing gives one event. The board
# turns ADC counts into millivolts (board.battery_mv).

from micropython import const

LOW = const(1)
_OK = const(2)
_HYSTERESIS_MV = const(100)
_SAMPLES = const(5)


class Battery:
    # read: board.battery_mv; low_mv (settable); mv: the filtered value (None before a sample);
    # buf: the last samples; value: True while low.
    def __init__(self, read, low_mv=3400):
        self.read = read
        self.low_mv = low_mv
        self.buf = []
        self.value = False
        self.mv = None

    def sample(self):
        self.buf.append(int(self.read()))
        if len(self.buf) > _SAMPLES:
            self.buf.pop(0)
        s = sorted(self.buf)
        self.mv = s[len(s) // 2]
        return self.mv

    def poll(self):
        """Take a sample; LOW once when the filtered value drops below low_mv, OK (2) once when it
        rises above low_mv + 100 mV; None otherwise."""
        mv = self.sample()
        if not self.value and mv < self.low_mv:
            self.value = True
            return LOW
        if self.value and mv >= self.low_mv + _HYSTERESIS_MV:
            self.value = False
            return _OK
        return None
