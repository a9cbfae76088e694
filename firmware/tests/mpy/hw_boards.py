# The ESP32 and Pico W board modules on the MicroPython VM with stand-ins for `machine` and
# `network` (written to the scratch dir argv[1] by test_hw_boards.py, FAKE_MACHINE/FAKE_NETWORK): wiring data -> pins, active levels, the battery
# divider, the MFRC522 over "SPI" (the simulated chip behind the fake bus), watchdog clamping, pin
# overrides from a provisioned identity. A unit test stubbing the neighbour (the silicon); the
# real thing is checked on hardware with `hil_tests --hil-port`.
import sys

from hw_check import check, done, eq

scratch = sys.argv[1]
part = sys.argv[2]  # "esp32" or "picow": one board per process keeps each run within 64 KB
sys.path.insert(0, scratch)

import machine  # noqa: E402  (the stand-in above)

from boards.sim_mfrc522 import SimMFRC522  # noqa: E402

chip = SimMFRC522(0x92)
machine.SPI_PEER[0] = chip
machine.HOOKS[5] = chip.cs  # ESP32 wiring: CS on GPIO5, RST on GPIO22
machine.HOOKS[22] = chip.rst

if part == "esp32":
    from boards import esp32  # noqa: E402

    b = esp32.Board()
    eq("esp32_name", b.name, "esp32")
    eq("esp32_hwid_from_mac", b.hardware_id(), "240ac4123456")
    eq("esp32_reset_reason_watchdog", b.reset_reason(), 2)
    machine.LEVELS[27] = 0  # active-low button with pull-up
    eq("esp32_button_pressed_low", b.button(), 1)
    machine.LEVELS[27] = 1
    eq("esp32_button_released_high", b.button(), 0)
    check("esp32_button_pull_up", (27, machine.Pin.IN, machine.Pin.PULL_UP) in machine.MADE)
    machine.LEVELS[26] = 1
    eq("esp32_tamper_open_high", b.tamper(), 1)
    b.led.rgb(1, 0, 1)
    eq("esp32_rgb_pins", (machine.LEVELS[25], machine.LEVELS[33], machine.LEVELS[32]), (1, 0, 1))
    check("esp32_led_is_rgb", b.led.is_rgb)
    b.buzzer.on()
    eq("esp32_buzzer_on", machine.LEVELS[14], 1)
    b.buzzer.off()
    eq("esp32_buzzer_off", machine.LEVELS[14], 0)
    machine.ADC.RAW[0] = 39718  # 2.0 V at the divider -> 4.0 V battery with the 1:2 divider
    eq("esp32_battery_mv", b.battery_mv(), 4000)
    eq("esp32_adc_attenuation", b._adc.att, machine.ADC.ATTN_11DB)
    chip.present(b"\x04\x01\x02\x03\x04\x05\x06")
    r = b.rfid()
    eq("esp32_spi_bus", (r.spi.bus, r.spi.kw["baudrate"]), (2, 1000000))
    eq("esp32_rfid_reads_uid", r.read_uid(), b"\x04\x01\x02\x03\x04\x05\x06")
    check("esp32_rst_pulsed_at_init", chip.hard_resets >= 1)
    eq("esp32_wdt", b.watchdog(30000).timeout, 30000)
    check("esp32_wifi_join", b.network_up({"wifi_ssid": "village", "wifi_password": "x"}) and b.rssi() == -61)
    import time  # noqa: E402

    nb = esp32.Board()
    t0 = time.ticks_ms()
    up = nb.network_up({"wifi_ssid": "elsewhere", "wifi_password": "x"})
    check("esp32_wifi_down_does_not_block", not up and time.ticks_diff(time.ticks_ms(), t0) < 100)
    up = nb.network_up({"wifi_ssid": "elsewhere", "wifi_password": "x"}, timeout_ms=200)
    check("esp32_wifi_wait_bounded", not up and nb._wlan.connects == 1)  # join still running: not restarted

else:
    from boards import picow  # noqa: E402

    machine.CAUSE[0] = 99
    p = picow.Board()
    eq("picow_name", p.name, "picow")
    eq("picow_unknown_reset_reason", p.reset_reason(), 255)
    check("picow_single_led", not p.led.is_rgb)
    p.led.rgb(0, 1, 0)
    eq("picow_led_pin_LED", machine.LEVELS["LED"], 1)
    eq("picow_wdt_clamped", p.watchdog(30000).timeout, 8388)
    machine.ADC.RAW[0] = 26479  # 1.333 V at GP28 -> 4.0 V with the 1:3 divider
    eq("picow_battery_mv", p.battery_mv(), 4000)

    # Pin overrides from the provisioned identity (CONSOLE.md `pins`): the CPython side wrote
    # <scratch>/data/identity.cfg with pins {"button.pin": 4, "buzzer": {"active": 0}}.
    del p
    from boards import esp32, mcu  # noqa: E402

    mcu.FLASH_ROOT = scratch
    o = esp32.Board()
    eq("override_button_pin", o.wiring["button"]["pin"], 4)
    eq("override_keeps_other_fields", o.wiring["button"]["pull"], "up")
    o.buzzer.on()
    eq("override_active_low_buzzer", machine.LEVELS[14], 0)
done()
