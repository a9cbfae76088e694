# The application layer shared by both roles: app.uplink (events -> outbox -> link, downlinks).
