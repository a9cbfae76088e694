"""Cases: the five-step closed loop for every alarm (service.py), its CLI (cli.py) and the gateway
plugin that runs it together with the patrol service (hooks.py: `attach(app)`)."""


def attach(app):
    from gateway.cases.hooks import attach as _attach

    return _attach(app)
